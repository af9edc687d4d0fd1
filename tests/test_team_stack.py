"""The team stack with real servers (no mocks): Ray checkpoints on S3, MLflow on PostgreSQL + S3,
and a DVC remote on S3. One SeaweedFS (session fixture ``s3_server``), one Ray head for the module.

Secrets travel only through process environments: the Ray head (and so its workers) and the
MLflow server get the S3 keys; stage processes get them only where they talk to S3 themselves
(Ray checkpoint storage); DVC reads them from ``.dvc/config.local``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from project import ROOT, TINY, make_project, read_json, run_stage
from servers import S3Server, mlflow_server, postgres, ray_node

from components.config import deep_merge

pytestmark = pytest.mark.slow

#: Variables that would let a process reach S3 on its own; stripped where a process must not.
S3_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
           "MLFLOW_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="module", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No S3 variables inherited from the caller, and no ~/.aws files: only what a test passes counts."""
    empty = tmp_path_factory.mktemp("no-aws")
    with pytest.MonkeyPatch.context() as mp:
        for name in S3_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        yield


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, isolated_environment) -> Iterator[str]:
    """A local Ray head (2 CPUs) whose workers inherit the S3 keys from its environment."""
    with ray_node(tmp_path_factory.mktemp("ray"), num_cpus=2, env=s3_server.env()) as address:
        yield address


def keys(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` (paginated)."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# --------------------------------------------------------------------------- 1. Ray checkpoints on S3
RAY_BUCKET = "stack-ray"


def test_interrupted_training_resumes_from_its_s3_checkpoint(tmp_path: Path, s3_server: S3Server,
                                                             ray_address: str) -> None:
    s3_server.make_bucket(RAY_BUCKET)
    project = make_project(tmp_path / "p")
    settings = ["--model", "gan", "--set", f"ray.storage_path=s3://{RAY_BUCKET}/ray", "--set", "ray.max_failures=0",
                "--set", "train.gan.log_every=2"]
    env = {"RAY_ADDRESS": ray_address, **s3_server.env()}
    marker = tmp_path / "fault-fired"
    failed = run_stage(project, "train", *settings, check=False,
                       env={**env, "GENMODELS_FAULT_AT_STEP": "6", "GENMODELS_FAULT_MARKER": str(marker)})
    assert failed.returncode != 0 and marker.read_text() == "6"  # step 6 = in epoch 2 (4 steps an epoch)
    assert not (project / "models" / "gan").exists()
    stored = keys(s3_server, RAY_BUCKET, "ray/")
    checkpoints = [k for k in stored if re.match(r"ray/train-gan-[0-9a-f]+/.*checkpoint_[^/]+/checkpoint\.pt$", k)]
    assert len(checkpoints) == 1, stored  # epoch 1's, written by the workers straight to S3
    run_prefix = "/".join(checkpoints[0].split("/")[:2]) + "/"

    resumed = run_stage(project, "train", *settings, env=env)
    assert "resumed from epoch 1" in resumed.stdout + resumed.stderr
    assert s3_server.secret_key not in resumed.stdout + resumed.stderr  # keys stay out of Ray's config and logs
    workers = read_json(project / "models" / "gan" / "workers.json")
    assert {w["step"] for w in workers} == {8}  # 2 epochs in all, the first one not repeated
    assert (project / "models" / "gan" / "checkpoint.pt").stat().st_size > 0
    assert keys(s3_server, RAY_BUCKET, run_prefix) == []  # finished: runner.delete_run emptied the run


def test_wrong_s3_keys_fail_before_training(tmp_path: Path, s3_server: S3Server, ray_address: str) -> None:
    s3_server.make_bucket(RAY_BUCKET)
    project = make_project(tmp_path / "p")
    env = {"RAY_ADDRESS": ray_address, **s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    run = run_stage(project, "train", "--model", "gan", "--set", f"ray.storage_path=s3://{RAY_BUCKET}/wrong",
                    env=env, check=False)
    assert run.returncode != 0
    assert f"checkpoint storage s3://{RAY_BUCKET}/wrong cannot be used" in run.stderr
    assert "AWS_SECRET_ACCESS_KEY" in run.stderr and "not-the-secret" not in run.stdout + run.stderr
    assert "resumed" not in run.stdout and "train gan" not in run.stdout  # no epoch ran
    assert keys(s3_server, RAY_BUCKET, "wrong") == []


# --------------------------------------------------------------------------- 2. MLflow: PostgreSQL + S3
MLFLOW_BUCKET = "stack-mlflow"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, ray_address: str) -> Iterator[dict]:
    """gan's smoke stages logged to an MLflow server (PostgreSQL store, S3 artifacts).

    The stages get no S3 variables at all: they send artifacts to the server, which writes them.
    Training runs on Ray (its rank-0 worker logs metrics and grids); the later stages run
    ``--plain`` (same tracking calls, from the stage process) to save ~2 minutes of Ray start-ups.
    """
    s3_server.make_bucket(MLFLOW_BUCKET)
    work = tmp_path_factory.mktemp("mlflow-stack")
    with postgres(work / "pg") as dsn, mlflow_server(
        work / "mlflow", dsn.replace("postgresql://", "postgresql+psycopg2://", 1), f"s3://{MLFLOW_BUCKET}/mlflow",
        env=s3_server.env(),
    ) as uri:
        project = make_project(work / "project")
        env = {"RAY_ADDRESS": ray_address, "MLFLOW_TRACKING_URI": uri}
        for stage, args in (("train", ["--model", "gan"]), ("sample", ["--model", "gan", "--plain"]),
                            ("evaluator", ["--plain"]), ("evaluate", ["--model", "gan", "--plain"])):
            run_stage(project, stage, *args, env=env)
        yield {"dsn": dsn, "uri": uri, "project": project}


def test_runs_and_metrics_are_rows_in_postgres(tracked: dict) -> None:
    import psycopg2

    run_id = read_json(tracked["project"] / "models" / "gan" / "mlflow_run.json")["run_id"]
    with psycopg2.connect(tracked["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("select name, run_uuid from runs")
        runs = set(cur.fetchall())
        cur.execute("select key, count(*) from metrics where run_uuid = %s group by key", (run_id,))
        metrics = dict(cur.fetchall())
    assert ("gan", run_id) in runs and "evaluator" in {name for name, _ in runs}
    assert metrics["train/loss_d"] >= 2  # one row per logged step
    assert {"eval/fid", "eval/kid"} <= set(metrics)  # the evaluate stage wrote into the same run


def test_artifacts_are_objects_in_the_bucket_written_through_the_server(tracked: dict, s3_server: S3Server) -> None:
    from mlflow.tracking import MlflowClient

    run_id = read_json(tracked["project"] / "models" / "gan" / "mlflow_run.json")["run_id"]
    run = MlflowClient(tracking_uri=tracked["uri"]).get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # clients go through the server's proxy
    stored = keys(s3_server, MLFLOW_BUCKET, "mlflow/")
    run_keys = [k for k in stored if f"/{run_id}/artifacts/" in k]
    assert any(re.search(r"/artifacts/images/samples.*\.png$", k) for k in run_keys), run_keys
    assert any("final_samples" in k for k in run_keys), run_keys  # the sample stage's grid
    assert any(k.endswith("/artifacts/checkpoints/checkpoint.pt") for k in run_keys), run_keys
    model_files = [k for k in stored if re.search(r"/models/m-[0-9a-f]+/artifacts/", k)]
    assert any(k.endswith("/MLmodel") for k in model_files), stored
    assert any(k.endswith(".pth") for k in model_files), model_files  # the pickled networks
    body = s3_server.client().get_object(Bucket=MLFLOW_BUCKET, Key=next(k for k in run_keys if k.endswith(".pt")))
    assert body["ContentLength"] > 1000


# --------------------------------------------------------------------------- 3. DVC remote on S3
DVC_BUCKET = "stack-dvc"


def copy_checkout(dest: Path) -> None:
    """Copy the repository's files (tracked, and new ones git does not ignore) into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # deleted-but-tracked files are skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def tree_hashes(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folders``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


def test_dvc_outputs_round_trip_through_the_s3_remote(tmp_path: Path, s3_server: S3Server) -> None:
    """The fetch stage's outputs (the cheap stage: the others need ~1 min of Ray start-ups each) go to
    the S3 remote and come back byte-identical into a checkout without them or the cache."""
    s3_server.make_bucket(DVC_BUCKET)
    repo = tmp_path / "repo"
    copy_checkout(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "profile": "smoke"}, sort_keys=False))
    smoke = yaml.safe_load((repo / "profiles" / "smoke.yaml").read_text())
    (repo / "profiles" / "smoke.yaml").write_text(yaml.safe_dump(deep_merge(smoke, TINY), sort_keys=False))
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in S3_VARS and k != "MLFLOW_TRACKING_URI"}
    env.update({"PATH": f"{venv_bin}:{env['PATH']}", "DVC_NO_ANALYTICS": "1"})

    def sh(*argv: str) -> str:
        done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    git = ("git", "-c", "user.name=test", "-c", "user.email=test@example.invalid")
    sh("git", "init", "-q")
    sh(*git, "add", "-A")
    sh(*git, "commit", "-qm", "checkout")
    # docs/launch.md, "DVC remote on the stack's S3": shared settings committed, endpoint and keys --local
    sh("dvc", "remote", "add", "-d", "team", f"s3://{DVC_BUCKET}/store")
    sh("dvc", "remote", "modify", "team", "region", "us-east-1")
    sh("dvc", "remote", "modify", "--local", "team", "endpointurl", s3_server.endpoint_url)
    sh("dvc", "remote", "modify", "--local", "team", "access_key_id", s3_server.access_key)
    sh("dvc", "remote", "modify", "--local", "team", "secret_access_key", s3_server.secret_key)

    sh("dvc", "repro", "fetch")
    sh(*git, "add", "-A")
    sh(*git, "commit", "-qm", "outputs and remote")
    committed = sh("git", "show", "HEAD:.dvc/config")
    assert f"s3://{DVC_BUCKET}/store" in committed
    for secret in (s3_server.access_key, s3_server.secret_key):
        assert secret not in committed
        assert secret in (repo / ".dvc" / "config.local").read_text()
    assert sh("git", "ls-files", ".dvc").split() == [".dvc/.gitignore", ".dvc/config"]  # config.local ignored

    outputs = ("data/prepared",)
    before = tree_hashes(repo, outputs)
    assert "data/prepared/meta.json" in before and len(before) >= 3
    sh("dvc", "push")
    assert any(k.startswith("store/files/md5/") for k in keys(s3_server, DVC_BUCKET, "store/"))
    for folder in (*outputs, ".dvc/cache"):
        shutil.rmtree(repo / folder)
    sh("dvc", "pull", "fetch")  # bare `dvc pull` would also ask for the stages this checkout never ran
    assert tree_hashes(repo, outputs) == before
    assert "up to date" in sh("dvc", "status", "fetch")  # the pulled outputs match dvc.lock: nothing to re-run
