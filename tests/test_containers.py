"""The project image and the Ray cluster of containers, for real (``make test-containers``).

One engine (infra/docker/engine), one image build (infra/docker/image, not pinned into the work
tree), one compose cluster for the module (infra/compose/cluster with private secrets, project
name and ports), all stopped at the end. Docker missing and not installable: one-line failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import S3Server, free_port

pytestmark = [pytest.mark.containers, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENGINE, IMAGE, CLUSTER = (str(ROOT / p) for p in ("infra/docker/engine", "infra/docker/image", "infra/compose/cluster"))


def sh(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300, check: bool = True,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False, input=stdin)
    if check and run.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} ... failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


@pytest.fixture(scope="module")
def docker_env() -> dict[str, str]:
    """The engine running, the base bootstrapped; the environment docker clients need."""
    started = sh([ENGINE, "base"], check=False, timeout=600)
    if started.returncode != 0:
        pytest.fail(f"Docker engine unavailable: {(started.stderr.strip().splitlines() or ['?'])[-1]}", pytrace=False)
    exported = dict(re.findall(r"^export (\w+)=(\S+)$", sh([ENGINE, "env"]).stdout, re.MULTILINE))
    return {**os.environ, **exported}


@pytest.fixture(scope="module")
def image(docker_env: dict[str, str]) -> str:
    """The project image, built from the bootstrapped base and pushed; its registry-pinned reference."""
    built = sh([IMAGE, "build"], env={**docker_env, "PIN": "0"}, timeout=1800)
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(docker_env: dict[str, str], image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The compose cluster under a private project name, secrets and ports; taken down with its volumes."""
    env = {**docker_env, "GENMODELS_IMAGE": image, "COMPOSE_PROJECT_NAME": f"gmtest{os.getpid()}",
           "COMPOSE_SECRETS": str(tmp_path_factory.mktemp("compose-secrets")),
           "MLFLOW_PORT": str(free_port()), "S3_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port())}  # fmt: skip
    try:
        sh([CLUSTER, "up"], env=env, timeout=600)
        env.update(re.findall(r"(\w+)=(\S+)", sh([CLUSTER, "env"], env=env).stdout))
        yield env
    finally:
        sh([CLUSTER, "down", "--volumes", "--timeout", "5"], env=env, timeout=300, check=False)


def compose(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([CLUSTER, *args], env=env, timeout=timeout, check=check)


def in_head(env: dict[str, str], script: str, timeout: float = 900) -> str:
    """Run a bash script in the Ray head container (the driver's place); returns its stdout."""
    return compose(env, "exec", "-T", "ray-head", "bash", "-euo", "pipefail", "-c", script, timeout=timeout).stdout


# ---------------------------------------------------------------------------------------------
# the image
# ---------------------------------------------------------------------------------------------


def test_image_is_pinned_by_the_registry_and_records_what_it_is(docker_env: dict[str, str], image: str) -> None:
    name, digest = image.split("@")
    registry, repo = name.split("/", 1)
    request = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/cpu", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Docker-Content-Digest"] == digest  # the registry serves exactly this image
    info = json.loads(sh(["docker", "image", "inspect", image], env=docker_env).stdout)[0]
    labels = info["Config"]["Labels"]
    assert labels["io.genmodels.requirements-lock.sha256"] == hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    head = sh(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head
    base = sh([ENGINE, "base"], env=docker_env).stdout.strip()
    assert labels["org.opencontainers.image.base.name"] == base and "@sha256:" in base
    assert info["Config"]["User"] == "1000:1000"
    # no build-time extras (CA bundle, wheels) and no secrets in the image's code
    listing = sh(["docker", "run", "--rm", image, "ls", "-A", "/app/infra/docker/build-extras"], env=docker_env)
    assert listing.stdout.split() == ["README.md"]


# ---------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------


def test_cluster_has_three_ray_nodes_and_publishes_only_mlflow_s3_and_the_dashboard_on_loopback(cluster: dict[str, str]) -> None:
    nodes = json.loads(in_head(cluster, "python -c 'import json, ray; ray.init(logging_level=\"error\"); "
                                         "print(json.dumps([(n[\"NodeManagerHostname\"], n[\"Resources\"].get(\"CPU\", 0)) "
                                         "for n in ray.nodes() if n[\"Alive\"]]))'").splitlines()[-1])
    assert sorted(nodes) == [["ray-head", 0], ["ray-worker-1", 1.0], ["ray-worker-2", 1.0]]
    ports = compose(cluster, "ps", "--format", "{{.Service}} {{.Ports}}").stdout
    published = re.findall(r"(\S+):(\d+)->", ports)
    assert published and {host for host, _ in published} == {"127.0.0.1"}
    assert {p for _, p in published} == {cluster["MLFLOW_PORT"], cluster["S3_PORT"], cluster["RAY_DASHBOARD_PORT"]}


@contextlib.contextmanager
def mlflow_client(cluster: dict[str, str]) -> Iterator[Any]:
    """An ``MlflowClient`` of the cluster's MLflow, with the pipeline's credentials in the environment while in use."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(key, cluster[key])
        yield mlflow.MlflowClient(cluster["MLFLOW_TRACKING_URI"])


def test_mlflow_refuses_anonymous_requests_and_serves_the_pipelines_credentials(cluster: dict[str, str]) -> None:
    url = f"{cluster['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    with mlflow_client(cluster) as client:
        assert client.get_experiment_by_name("Default") is not None


# ---------------------------------------------------------------------------------------------
# Ray jobs: the way a Ray user launches on an existing cluster, with Ray's own CLI from the host
# ---------------------------------------------------------------------------------------------

RAY_CLI = str(Path(sys.executable).with_name("ray"))  # the host venv's Ray (the same 2.60 as the image's)
JOB_WORKSPACE = "/workspace/job"  # its own run folder on the shared volume: the fault tests keep /workspace


def ray_job(env: dict[str, str], command: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ray job COMMAND --address <the published dashboard> ARGS`` from the host, holding the
    cluster's token as a Ray client does (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``)."""
    cli = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS")}
    cli.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=env["RAY_AUTH_TOKEN_PATH"])
    return sh([RAY_CLI, "job", command, "--address", env["RAY_API_SERVER_ADDRESS"], *args], env=cli, timeout=timeout,
              check=check)


def test_the_jobs_api_refuses_requests_without_the_clusters_token(cluster: dict[str, str]) -> None:
    url = f"{cluster['RAY_API_SERVER_ADDRESS']}/api/jobs/"
    codes = {}
    for name, headers in {"none": {}, "wrong": {"Authorization": "Bearer " + "0" * 64}}.items():
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        codes[name] = refused.value.code
    assert codes == {"none": 401, "wrong": 403}
    token = Path(cluster["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=10) as ok:
        assert ok.status == 200 and isinstance(json.loads(ok.read()), list)


def test_ray_job_submit_runs_the_smoke_pipeline_on_the_cluster(cluster: dict[str, str]) -> None:
    """`ray job submit ... -- bash /app/infra/run-pipeline` (the image's code, the smoke profile
    through the job's runtime env) waits for the whole smoke `dvc repro`; the job SUCCEEDED, its
    logs hold the stages' output, every model has a finite FID in metrics/ of the run folder and a
    FINISHED MLflow run on the compose server holding the same FID."""
    job_id = f"smoke-{os.getpid()}-{int(time.time())}"
    env_vars = {"PIPELINE_PROFILE": "smoke", "WORKSPACE": JOB_WORKSPACE}
    started = time.monotonic()
    submitted = ray_job(cluster, "submit", "--submission-id", job_id, "--runtime-env-json",
                        json.dumps({"env_vars": env_vars}), "--", "bash", "/app/infra/run-pipeline",
                        timeout=1800, check=False)
    print(f"\nray job submit (smoke pipeline): {time.monotonic() - started:.0f} s")
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert f"Job '{job_id}' succeeded" in ray_job(cluster, "status", job_id).stdout
    token = Path(cluster["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{cluster['RAY_API_SERVER_ADDRESS']}/api/jobs/{job_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as info:
        assert json.loads(info.read())["status"] == "SUCCEEDED"
    logs = ray_job(cluster, "logs", job_id).stdout
    models = list(yaml.safe_load((ROOT / "params.yaml").read_text())["train"])
    for stage in ("fetch", "classifier", *(f"{s}@{m}" for s in ("train", "sample", "evaluate") for m in models), "report"):
        assert f"Running stage '{stage}'" in logs, (stage, logs[-3000:])
    assert "run-pipeline: profile smoke" in logs

    found = json.loads(in_head(cluster, f"cd {JOB_WORKSPACE} && python -c 'import glob, json; print(json.dumps("
                                        "{f: json.load(open(f)) for f in glob.glob(\"metrics/*.json\") + "
                                        "glob.glob(\"models/*/mlflow_run.json\")}))'"))
    metrics = {m: found[f"metrics/{m}.json"] for m in models}
    assert all(math.isfinite(v["fid"]) and v["fid"] >= 0 for v in metrics.values()), metrics
    with mlflow_client(cluster) as client:
        for model in models:
            run = client.get_run(found[f"models/{model}/mlflow_run.json"]["run_id"])
            assert run.info.status == "FINISHED" and run.info.run_name == model, (model, run.info)
            assert run.data.tags["image"] == cluster["GENMODELS_IMAGE"]
            assert run.data.metrics["eval/fid"] == pytest.approx(metrics[model]["fid"])


# ---------------------------------------------------------------------------------------------
# the pipeline on the cluster, and its faults. One GAN configuration throughout: the smoke
# profile with 2 ranks SPREAD, checkpoints in S3 every epoch and LONG_EPOCHS epochs, so that there
# is time for a fault between the first checkpoint and the end. The smoke `dvc repro train@gan`
# in /workspace is the uninterrupted run (with an MLflow outage, which does not touch the
# weights); each fault re-runs the same configuration in a second run folder, LONG.
# ---------------------------------------------------------------------------------------------

LONG, LONG_EPOCHS, OUTAGE_S = "/workspace/long", 16, 25
RESUMED = re.compile(r"gan: resumed from epoch (\d+) \(step (\d+)\)")


def on_cluster(src: str, workspace: str, targets: str) -> str:
    """The script that copies the image's code to SRC with the cluster's settings, then runs
    `infra/run-pipeline TARGETS` in WORKSPACE (DVC remote on the cluster's S3) and prints the
    Ray nodes' hostnames by node id on a line ``NODES {...}``."""
    return f"""\
rm -rf {src} && cp -a /app {src}
python - <<'PY'
import yaml
path = "{src}/profiles/smoke.yaml"
smoke = yaml.safe_load(open(path))
smoke["ray"] = {{**smoke.get("ray", {{}}), "num_workers": 2, "placement_strategy": "SPREAD",
                "storage_path": "s3://genmodels/ray", "max_failures": 2}}
smoke["mlflow"] = {{"log_system_metrics": False}}
smoke["families"]["gan"].update(epochs={LONG_EPOCHS}, checkpoint_every=1, image_every={LONG_EPOCHS})
open(path, "w").write(yaml.safe_dump(smoke, sort_keys=False))
PY
PIPELINE_SOURCE={src} PIPELINE_PROFILE=smoke WORKSPACE={workspace} infra/run-pipeline {targets} >&2
echo "NODES $(python -c 'import json, ray; ray.init(logging_level="error"); print(json.dumps({{n["NodeID"]: n["NodeManagerHostname"] for n in ray.nodes()}}))')"
"""


def s3(env: dict[str, str]):
    return S3Server(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]).client()


def start_in_head(env: dict[str, str], script: str) -> subprocess.Popen[str]:
    """Start a bash script in the head container, in a session of its own whose id is in
    /tmp/job.pid there (``finish`` kills it on a timeout); its stdout and stderr together, as text."""
    argv = [CLUSTER, "exec", "-T", "ray-head", "bash", "-c",
            'setsid bash -euo pipefail -c "$0" & echo $! >/tmp/job.pid; wait $!', script]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.env = env  # type: ignore[attr-defined]
    return proc


def wait_for_checkpoint(env: dict[str, str], proc: subprocess.Popen[str], timeout_s: float = 300) -> str:
    """Block until Ray Train has registered a checkpoint of a train-gan run; returns the snapshot key.

    Ray Train 2 writes ``<storage>/<run>/checkpoint_manager_snapshot.json`` once a reported
    checkpoint is fully uploaded and registered: from then on a restarted worker group resumes.
    """
    client, deadline = s3(env), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="genmodels", Prefix="ray/train-gan-").get("Contents", [])]
        snapshots = [k for k in keys if k.endswith("/checkpoint_manager_snapshot.json")]
        if snapshots:
            return snapshots[0]
        if proc.poll() is not None:
            raise AssertionError(f"training ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint within {timeout_s} s")


def finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """Its output once it has ended; after ``timeout_s`` it is killed (in the head too) and the test fails."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        compose(proc.env, "exec", "-T", "ray-head", "bash", "-c", "kill -9 -- -$(cat /tmp/job.pid)", check=False)
        os.killpg(proc.pid, 9)
        out = proc.communicate(timeout=30)[0]
        raise AssertionError(f"still running after {timeout_s} s:\n{out[-3000:]}") from None
    return out


def latest_checkpoint(env: dict[str, str], key: str) -> str:
    snapshot = json.loads(s3(env).get_object(Bucket="genmodels", Key=key)["Body"].read())
    return snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]


def sql(env: dict[str, str], query: str) -> list[list[str]]:
    out = compose(env, "exec", "-T", "postgres", "psql", "-h", "/tmp", "-U", "mlflow", "-d", "mlflow", "-Atc", query).stdout
    return [line.split("|") for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def smoke(cluster: dict[str, str]) -> dict[str, object]:
    """`dvc repro train@gan` (after fetch) on the cluster, driver in the head container; the MLflow
    server is stopped for OUTAGE_S once the first checkpoint is registered, then started again."""
    proc = start_in_head(cluster, on_cluster("/tmp/src", "/workspace", "train@gan"))
    key = wait_for_checkpoint(cluster, proc, timeout_s=600)
    before = latest_checkpoint(cluster, key)
    stopped = time.time()
    compose(cluster, "stop", "--timeout", "5", "mlflow")
    time.sleep(OUTAGE_S)
    during = latest_checkpoint(cluster, key)
    compose(cluster, "start", "mlflow")
    compose(cluster, "up", "-d", "--wait", "mlflow")
    back = time.time()
    out = finish(proc, 900)
    assert proc.returncode == 0, out[-3000:]
    print(f"\nfault mlflow-outage: stopped {back - stopped:.0f} s, stage ended {time.time() - back:.0f} s after restart")
    nodes = json.loads(re.findall(r"^NODES (.*)$", out, re.MULTILINE)[-1])
    return {"nodes": nodes, "before": before, "during": during, "stopped": stopped, "back": back}


def test_smoke_stage_runs_its_ranks_on_both_worker_containers(cluster: dict[str, str], smoke: dict) -> None:
    """fetch + train@gan by `dvc repro` on the head; checkpoints in S3, the run in the MLflow
    server (a row in PostgreSQL, artifacts in the bucket), outputs pushed to the DVC remote."""
    records = json.loads(in_head(cluster, "cat /workspace/models/gan/workers.json"))
    assert sorted(r["rank"] for r in records) == [0, 1], records
    assert sorted(smoke["nodes"][r["node"]] for r in records) == ["ray-worker-1", "ray-worker-2"], records
    assert len({r["weights"] for r in records}) == 1  # DDP kept both ranks' weights identical
    run = json.loads(in_head(cluster, "cat /workspace/models/gan/mlflow_run.json"))
    assert run["tracking_uri"] == "http://mlflow:5000"
    rows = sql(cluster, f"select status, (select value from tags t where t.run_uuid = r.run_uuid and key = 'image') "
                        f"from runs r where run_uuid = '{run['run_id']}'")
    assert rows == [["FINISHED", cluster["GENMODELS_IMAGE"]]]
    artifacts = [o["Key"] for o in s3(cluster).list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith("/artifacts/loss.png") for k in artifacts), artifacts[:20]
    assert s3(cluster).list_objects_v2(Bucket="dvc", Prefix="store/").get("KeyCount", 0) > 0  # dvc push reached the remote


def test_training_goes_on_while_mlflow_is_stopped_and_its_metrics_arrive_later(cluster: dict[str, str], smoke: dict) -> None:
    """MLflow stopped for OUTAGE_S mid-training: checkpoints go on meanwhile, every loss point logged
    during the outage is in PostgreSQL afterwards (the client retries), no write is reported lost."""
    assert smoke["during"] != smoke["before"]  # training went on while the server was down
    run = json.loads(in_head(cluster, "cat /workspace/models/gan/mlflow_run.json"))
    history = json.loads(in_head(cluster, "cat /workspace/models/gan/history.json"))
    loss_key = next(k for k in history[0] if k != "step")
    logged = sorted(h["step"] for h in history if loss_key in h)
    rows = sql(cluster, f"select step, timestamp from metrics where run_uuid = '{run['run_id']}' "
                        f"and key = 'train/{loss_key}' order by step")
    assert sorted(int(step) for step, _ in rows) == logged  # every point, none twice
    in_outage = [s for s, ts in rows if smoke["stopped"] * 1000 < int(ts) < smoke["back"] * 1000]
    assert in_outage, "no loss was logged while the server was down: the outage missed training"
    assert not sql(cluster, f"select value from tags where run_uuid = '{run['run_id']}' and key = 'tracking.lost_writes'")


@pytest.fixture(scope="module")
def long_workspace(cluster: dict[str, str], smoke: dict) -> dict[str, str]:
    """The cluster with a second run folder, LONG, holding the same configuration and data."""
    in_head(cluster, on_cluster("/tmp/long", LONG, "fetch"), timeout=600)
    return cluster


@pytest.fixture
def long_gan(long_workspace: dict[str, str]) -> Iterator[dict[str, str]]:
    """LONG without unfinished GAN runs (checkpoints in S3, MLflow run markers) before and after."""
    def forget() -> None:
        client = s3(long_workspace)
        for obj in client.list_objects_v2(Bucket="genmodels", Prefix="ray/train-gan-").get("Contents", []):
            client.delete_object(Bucket="genmodels", Key=obj["Key"])
        in_head(long_workspace, f"rm -rf {LONG}/ray_results/.mlflow_runs")

    forget()
    yield long_workspace
    forget()


def train_long(tag: str, *settings: str) -> str:
    """The script training the GAN into LONG/runs/TAG/ (not a DVC stage: no DVC state)."""
    return (f"cd {LONG} && export RAY_ADDRESS=auto && python -m pipelines.train --model gan "
            f"--out runs/{tag}/gan --plot runs/{tag}/gan.csv" + "".join(f" --set {s}" for s in settings))


def wait_healthy(env: dict[str, str], container: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = sh(["docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", container], env=env).stdout
        if state.split() == ["running", "healthy"]:
            return
        time.sleep(2)
    raise AssertionError(f"{container} not healthy within {timeout_s} s: {state}")


def test_a_killed_worker_container_is_replaced_and_training_resumes_from_its_checkpoint(long_gan: dict[str, str]) -> None:
    """`docker kill` of a worker container after a checkpoint is registered, then `docker start`:
    FailureConfig restarts the worker group, which resumes from that checkpoint, logs into the same
    MLflow run, and ends with the weights of the uninterrupted run (resuming at an epoch boundary
    replays the same batches: the loader's order depends on (seed, rank, epoch) only)."""
    started = time.time()
    proc = start_in_head(long_gan, train_long("killed"))
    wait_for_checkpoint(long_gan, proc)
    killed = time.monotonic()
    compose(long_gan, "kill", "ray-worker-2")
    compose(long_gan, "start", "ray-worker-2")
    out = finish(proc, 600)
    assert proc.returncode == 0, out[-3000:]
    resumed = RESUMED.findall(out)
    print(f"\nfault worker-kill: kill -> stage end {time.monotonic() - killed:.0f} s, resumed {resumed[-1:]}")
    assert resumed and 1 <= int(resumed[-1][0]) < LONG_EPOCHS, out[-3000:]  # from a checkpoint, not from scratch
    records = json.loads(in_head(long_gan, f"cat {LONG}/runs/killed/gan/workers.json"))
    assert records[0]["step"] > int(resumed[-1][1])
    run = json.loads(in_head(long_gan, f"cat {LONG}/runs/killed/gan/mlflow_run.json"))
    runs = sql(long_gan, f"select run_uuid, status from runs where name = 'gan' and start_time >= {int(started * 1000)}")
    assert runs == [[run["run_id"], "FINISHED"]]  # one run, re-used by the restarted workers
    steps = sql(long_gan, f"select min(step), max(step) from metrics where run_uuid = '{run['run_id']}' and key = 'train/epoch'")
    # epochs logged before the kill (the one that ended at the resume step included) and after it
    assert steps and int(steps[0][0]) <= int(resumed[-1][1]) < int(steps[0][1])
    reference = json.loads(in_head(long_gan, "cat /workspace/models/gan/workers.json"))[0]["weights"]
    assert {r["weights"] for r in records} == {reference}  # the smoke stage's: same configuration, no fault


def test_a_driver_killed_mid_stage_resumes_on_the_next_repro(long_gan: dict[str, str]) -> None:
    """SIGKILL of `dvc repro` and its stage (one process group, in the head container) after a
    checkpoint is registered; `dvc repro` again resumes the same Ray run into the same MLflow run,
    and DVC's outputs were never half-written (absent until the stage completes). No run cache:
    it would restore an earlier complete run of the same stage (when this test is re-run) instead."""
    proc = start_in_head(long_gan, f"cd {LONG} && export RAY_ADDRESS=auto && dvc repro --no-run-cache train@gan")
    key = wait_for_checkpoint(long_gan, proc)
    ray_run = key.split("/")[1]
    in_head(long_gan, "kill -9 -- -$(cat /tmp/job.pid)")  # the session: dvc, its shell, the stage
    killed = time.monotonic()
    finish(proc, 60)
    left = in_head(long_gan, f"cd {LONG} && ls models/gan 2>/dev/null || true; cat ray_results/.mlflow_runs/{ray_run}")
    *outputs, run_id = left.split()
    assert outputs == [], outputs  # nothing of the stage's output folder before it completes
    status = in_head(long_gan, f"cd {LONG} && dvc status train@gan")
    assert re.search(r"deleted: +models/gan\n", status), status  # DVC knows the stage must run again
    rerun = start_in_head(long_gan, f"cd {LONG} && export RAY_ADDRESS=auto && dvc repro --no-run-cache train@gan")
    out = finish(rerun, 600)
    assert rerun.returncode == 0, out[-3000:]
    resumed = RESUMED.findall(out)
    print(f"\nfault driver-kill: kill -> repro end {time.monotonic() - killed:.0f} s, resumed {resumed[-1:]}")
    assert resumed and int(resumed[-1][0]) >= 1, out[-3000:]
    assert json.loads(in_head(long_gan, f"cat {LONG}/models/gan/mlflow_run.json"))["run_id"] == run_id
    assert sql(long_gan, f"select status from runs where run_uuid = '{run_id}'") == [["FINISHED"]]
    assert "up to date" in in_head(long_gan, f"cd {LONG} && dvc status train@gan")


def test_a_worker_cut_off_the_network_is_named_within_a_bounded_time(long_gan: dict[str, str]) -> None:
    """`docker network disconnect` of a worker container mid-training: the stage recovers or fails,
    naming the lost node, within CUT_BOUND_S (Ray marks a silent node dead after its health checks;
    the Train controller then restarts or gives up) and never hangs; reconnected afterwards."""
    bound_s = 420
    # one restart, and a group that cannot be placed again gives up after 15 s (Ray's default: 60)
    proc = start_in_head(long_gan, "export RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=15 && "
                         + train_long("cut", "ray.max_failures=1"))
    wait_for_checkpoint(long_gan, proc)
    container = compose(long_gan, "ps", "-q", "ray-worker-1").stdout.strip()
    network = f"{long_gan['COMPOSE_PROJECT_NAME']}_genmodels"
    ip = sh(["docker", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', container],
            env=long_gan).stdout.strip()
    cut = time.monotonic()
    sh(["docker", "network", "disconnect", network, container], env=long_gan)
    try:
        out = finish(proc, bound_s)
    finally:
        sh(["docker", "network", "connect", network, container], env=long_gan, check=False)
    print(f"\nfault network-cut: cut -> stage end {time.monotonic() - cut:.0f} s, exit {proc.returncode}")
    wait_healthy(long_gan, container)  # Ray dropped the node: its raylet exits, the container restarts
    if proc.returncode == 0:
        assert RESUMED.search(out), out[-3000:]
    else:  # retries spent: one line naming the node (Ray's own log lines may still follow it)
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert errors and errors[-1].startswith("error: Ray job train-gan-"), out[-3000:]
        assert f"nodes lost during it: ray-worker-1 ({ip}," in errors[-1], errors[-1]


def test_a_driver_pointed_at_a_dead_head_fails_in_seconds(cluster: dict[str, str]) -> None:
    out = compose(cluster, "exec", "-T", "-e", "RAY_ADDRESS=ray-head:1", "ray-head", "bash", "-c",
                  "cd /tmp/src 2>/dev/null || cd /app; python -m pipelines.train --model gan", check=False, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: no Ray cluster at ray-head:1 ")


def test_script_fails_in_one_line_without_docker(tmp_path: Path) -> None:
    """Not root or no apt-get, and no dockerd: `engine start` says so in one line instead of hanging."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "python3", "seq", "sleep", "cat", "dirname", "mkdir", "chmod"):
        path = sh(["bash", "-c", f"command -v {tool}"], check=False).stdout.strip()
        if path:
            (bin_dir / tool).symlink_to(path)
    (bin_dir / "id").unlink()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    env = {"PATH": str(bin_dir), "GENMODELS_DOCKER_DIR": str(tmp_path / "state")}
    run = sh([str(bin_dir / "bash"), ENGINE, "start"], env=env, check=False, timeout=30)
    assert run.returncode == 1
    missing = "docker.io docker-registry debootstrap"
    assert run.stderr.strip().splitlines() == [
        f"engine: Docker is missing ({missing}) and cannot be installed here (needs root and apt-get)"]


