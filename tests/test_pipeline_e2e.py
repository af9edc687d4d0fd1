"""`dvc repro` end to end on the smoke profile, on the team stack: `infra/local/stack start`
(PostgreSQL + SeaweedFS S3 + MLflow server), a private local Ray head (`infra/local/with-ray`),
all five families; then the DVC remote on S3 and a fresh clone that `dvc pull`s every output.

The embedded default store (sqlite) is what tests/test_ray_stages.py runs the stages against.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from project import run_command
from servers import S3Server, local_stack_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: params.yaml's model sections, plus the GAN again under another seed (the report's table across seeds)
MODELS = [*yaml.safe_load((ROOT / "params.yaml").read_text())["train"], "gan_seed1"]
#: every output folder or file the pipeline declares (dvc.yaml outs, metrics and plots)
OUTPUTS = ("data/prepared", "models", "samples", "metrics", "plots", "reports")


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` with the project venv first on PATH and only the given MLflow/S3/Ray settings."""
    base = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": "", "DVC_NO_ANALYTICS": "1"}
    return run_command(cmd, cwd, tracking="isolated", env={**base, **(env or {})}, check=check, timeout=1500)


def stages_in(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def tree_hashes(root: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file of every pipeline output under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for name in OUTPUTS for p in sorted((root / name).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """The team stack, started by its own script; yields what `infra/local/stack env` exports,
    plus ``PG_DSN`` (from the stack's credentials file) for the PostgreSQL checks."""
    with local_stack_env() as stack_env:
        started = sh([str(ROOT / "infra/local/stack"), "start"], ROOT, env=stack_env)
        assert "mlflow: started" in started.stdout, started.stdout + started.stderr
        exported = dict(re.findall(r"^export (\w+)=(\S+)$", sh([str(ROOT / "infra/local/stack"), "env"], ROOT,
                                                                 env=stack_env).stdout, re.MULTILINE))
        creds = dict(line.split("=", 1) for line in (Path(stack_env["STACK_DIR"]) / "credentials").read_text().split())
        exported["PG_DSN"] = (f"postgresql://{creds['PG_USER']}:{creds['PG_PASSWORD']}@127.0.0.1:"
                              f"{stack_env['STACK_PG_PORT']}/mlflow")
        # The stack's MLflow has basic auth: this process's MlflowClient checks need the credentials
        # `env` exports (the pipeline's subprocesses get them through stack_env).
        with pytest.MonkeyPatch.context() as mp:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                mp.setenv(key, exported[key])
            yield exported


def stack_env(stack: dict[str, str]) -> dict[str, str]:
    """What a user has after ``eval "$(infra/local/stack env)"``."""
    return {k: v for k, v in stack.items() if k != "PG_DSN"}


def s3(stack: dict[str, str]) -> S3Server:
    return S3Server(stack["AWS_ENDPOINT_URL"], stack["AWS_ACCESS_KEY_ID"], stack["AWS_SECRET_ACCESS_KEY"])


def configure_remote(repo: Path, stack: dict[str, str], shared: bool) -> None:
    """docs/launch.md's DVC remote: the URL committed, endpoint and keys in .dvc/config.local only."""
    if shared:
        sh(["dvc", "remote", "add", "-d", "team", "s3://dvc/e2e"], repo)
        sh(["dvc", "remote", "modify", "team", "region", "us-east-1"], repo)
    for option, var in (("endpointurl", "AWS_ENDPOINT_URL"), ("access_key_id", "AWS_ACCESS_KEY_ID"),
                        ("secret_access_key", "AWS_SECRET_ACCESS_KEY")):
        sh(["dvc", "remote", "modify", "--local", "team", option, stack[var]], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, stack) -> Path:
    """A clone of the repository (tracked files as they are now), switched to the smoke profile,
    with the team's DVC remote on the stack's S3."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes((ROOT / name).read_bytes())
            (repo / name).chmod((ROOT / name).stat().st_mode)
    params = (repo / "params.yaml").read_text()
    params = params.replace("profile: default", "profile: smoke", 1)
    (repo / "params.yaml").write_text(params.replace("  cgan: &cgan\n", "  gan_seed1: {<<: *gan, seed: 1}\n  cgan: &cgan\n", 1))
    sh(["git", "init", "-q"], repo)
    # the repository's own identity: `dvc exp run` commits, and CI's HOME has no ~/.gitconfig
    sh(["git", "config", "user.name", "genmodels e2e"], repo)
    sh(["git", "config", "user.email", "e2e@genmodels.invalid"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "smoke"], repo)
    configure_remote(repo, stack, shared=True)
    sh(["git", "commit", "-qam", "team remote"], repo)
    assert sh(["git", "ls-files", ".dvc"], repo).stdout.split() == [".dvc/.gitignore", ".dvc/config"]
    assert stack["AWS_SECRET_ACCESS_KEY"] in (repo / ".dvc" / "config.local").read_text()  # ignored by git
    return repo


@pytest.fixture(scope="module")
def reproduced(repo, stack) -> tuple[Path, str]:
    """`dvc repro` with the stack's environment, then the outputs committed and pushed."""
    run = sh([sys.executable, "infra/local/with-ray", "--", "dvc", "repro"], repo, env=stack_env(stack))
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "outputs"], repo)
    sh(["dvc", "push"], repo)
    return repo, run.stdout + run.stderr


def test_every_stage_ran(reproduced):
    _, output = reproduced
    ran = stages_in(output)
    expected = {"fetch", "classifier", "report"} | {f"{s}@{m}" for s in ("train", "sample", "evaluate") for m in MODELS}
    assert set(ran) == expected
    assert ran.index("fetch") < ran.index("train@gan") < ran.index("sample@gan") < ran.index("evaluate@gan")
    assert ran[-1] == "report"


def test_metrics_are_finite_for_all_five_families(reproduced):
    repo, _ = reproduced
    for model in MODELS:
        metrics = json.loads((repo / "metrics" / f"{model}.json").read_text())
        for key in ("fid", "fid_std", "kid", "precision", "recall", "ceiling_fid", "floor_fid"):
            assert math.isfinite(metrics[key]), (model, key)
    assert "cond_acc" in json.loads((repo / "metrics" / "cgan.json").read_text())
    assert "test_elbo" in json.loads((repo / "metrics" / "vae.json").read_text())
    assert "test_noise_loss" in json.loads((repo / "metrics" / "ddpm.json").read_text())
    shown = sh(["dvc", "metrics", "show", "--json"], repo).stdout
    assert all(f"metrics/{m}.json" in shown for m in MODELS)


def test_report_reads_the_gans_two_seeds_as_one(reproduced):
    repo, _ = reproduced
    seeds = (repo / "reports" / "leaderboard.md").read_text(encoding="utf-8").split("## Across seeds", 1)[1]
    gan = next(line for line in seeds.splitlines() if line.startswith("| ") and "| gan |" in line)
    assert "| 0, 1 |" in gan and " ± " in gan.split("|")[5], gan  # FID mean ± std across the two seeds
    fids = [json.loads((repo / "metrics" / f"{m}.json").read_text())["fid"] for m in ("gan", "gan_seed1")]
    assert fids[0] != fids[1]  # another seed trained another model
    assert f"{sum(fids) / 2:.2f}" in gan.split("|")[5]


def runs_by_name(stack: dict[str, str]) -> tuple[MlflowClient, dict]:
    client = MlflowClient(tracking_uri=stack["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("genmodels-smoke-synthetic")
    return client, {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_five_mlflow_runs_with_curves_images_and_eval_metrics(reproduced, stack):
    repo, _ = reproduced
    client, runs = runs_by_name(stack)
    assert set(MODELS) <= set(runs)
    for model in MODELS:
        run = runs[model]
        assert run.info.run_id == json.loads((repo / "models" / model / "mlflow_run.json").read_text())["run_id"]
        assert "eval/fid" in run.data.metrics and "train/images_per_s" in run.data.metrics
        loss_key = "train/loss_d" if "gan" in model else "train/loss"
        assert len(client.get_metric_history(run.info.run_id, loss_key)) >= 2
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert sum("samples" in p for p in images) >= 2
        assert run.data.tags["dvc_stage"] == f"train@{model}" and run.data.tags["git_commit"] != "unknown"


def test_no_run_is_left_running(reproduced, stack):
    """Every run the pipeline opens is ended: the models' runs by train, the classifier's by its stage."""
    _, runs = runs_by_name(stack)
    assert {"classifier", *MODELS} <= set(runs)
    assert {name: run.info.status for name, run in runs.items() if run.info.status != "FINISHED"} == {}


def test_runs_are_rows_in_postgres(reproduced, stack):
    import psycopg2

    repo, _ = reproduced
    ids = {m: json.loads((repo / "models" / m / "mlflow_run.json").read_text())["run_id"] for m in MODELS}
    with psycopg2.connect(stack["PG_DSN"]) as conn, conn.cursor() as cur:
        cur.execute("select run_uuid, name from runs")
        runs = dict(cur.fetchall())
        cur.execute("select run_uuid, count(*) from metrics where key = 'eval/fid' group by run_uuid")
        fid_rows = dict(cur.fetchall())
    conn.close()
    for model, run_id in ids.items():
        assert runs.get(run_id) == model and fid_rows.get(run_id, 0) >= 1, model


def test_artifacts_are_objects_in_the_stacks_bucket(reproduced, stack):
    repo, _ = reproduced
    stored = [o["Key"] for page in s3(stack).client().get_paginator("list_objects_v2").paginate(Bucket="mlflow")
              for o in page.get("Contents", [])]
    for model in MODELS:
        run_id = json.loads((repo / "models" / model / "mlflow_run.json").read_text())["run_id"]
        mine = [k for k in stored if f"/{run_id}/artifacts/" in k]
        assert any(re.search(r"/artifacts/images/samples.*\.png$", k) for k in mine), (model, mine)
        assert any("final_samples" in k for k in mine), (model, mine)
        assert any(k.endswith("/artifacts/checkpoints/checkpoint.pt") for k in mine), (model, mine)
    assert sum(k.endswith("/MLmodel") for k in stored) >= len(MODELS)  # one logged model per family


def test_s3_keys_appear_in_no_output_log_or_mlflow_param(reproduced, stack):
    repo, output = reproduced
    secrets = (stack["AWS_SECRET_ACCESS_KEY"], stack["AWS_ACCESS_KEY_ID"])
    assert not any(secret in output for secret in secrets)
    for path in [p for name in (*OUTPUTS, "dvc.lock", "params.yaml", ".dvc/config") for p in
                 ([repo / name] if (repo / name).is_file() else (repo / name).rglob("*")) if p.is_file()]:
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path
    _, runs = runs_by_name(stack)
    for run in runs.values():
        values = " ".join(map(str, [*run.data.params.values(), *run.data.tags.values()]))
        assert not any(secret in values for secret in secrets), run.info.run_name


def test_dvc_pull_on_a_fresh_clone_restores_every_output(reproduced, stack, tmp_path):
    repo, _ = reproduced
    before = tree_hashes(repo)
    assert any(k.startswith("models/ddpm/") for k in before) and "reports/index.html" in before
    remote = [o["Key"] for o in s3(stack).client().list_objects_v2(Bucket="dvc", Prefix="e2e/").get("Contents", [])]
    assert remote, "dvc push left nothing in s3://dvc/e2e"
    fresh = tmp_path / "fresh"
    sh(["git", "clone", "-q", str(repo), str(fresh)], tmp_path)
    assert not any((fresh / name).exists() for name in OUTPUTS)
    configure_remote(fresh, stack, shared=False)  # the committed URL plus this machine's keys
    sh(["dvc", "pull"], fresh)
    assert tree_hashes(fresh) == before
    assert "up to date" in sh(["dvc", "status"], fresh).stdout.lower()


def test_report_lists_every_model(reproduced):
    repo, _ = reproduced
    page = (repo / "reports" / "index.html").read_text()
    for model in MODELS:
        assert model in page
    board = (repo / "reports" / "leaderboard.md").read_text()
    assert board.count("|") > 30 and "floor" in board.lower()


def test_every_model_is_registered_and_its_champion_generates_in_a_fresh_process(reproduced, stack, tmp_path):
    repo, _ = reproduced
    client = MlflowClient(stack["MLFLOW_TRACKING_URI"])
    for model in MODELS:
        metrics = json.loads((repo / "metrics" / f"{model}.json").read_text())
        champion = client.get_model_version_by_alias(f"genmodels-{model}", "champion")
        assert metrics["registered_model"] == f"genmodels-{model}" and int(champion.version) == metrics["model_version"]
        assert float(champion.tags["eval/fid"]) == pytest.approx(metrics["fid"])
        assert champion.tags["extractor_checksum"] == metrics["extractor_checksum"] and champion.tags["data_checksum"]
    script = ("import json, mlflow.pyfunc, pandas as pd\n"
              f"out = {{m: mlflow.pyfunc.load_model(f'models:/genmodels-{{m}}@champion').predict("
              f"pd.DataFrame({{'num_images': [2]}}), params={{'seed': 1}})['image'].str.len().min() for m in {MODELS!r}}}\n"
              "print(json.dumps({k: int(v) for k, v in out.items()}))\n")
    run = sh([sys.executable, "-c", script], tmp_path, env=stack_env(stack))  # cwd outside the checkout
    assert all(n > 100 for n in json.loads(run.stdout.strip().splitlines()[-1]).values()), run.stdout
    sh([sys.executable, "-m", "pipelines.generate", "--uri", "models:/genmodels-ddpm@champion", "-n", "4",
        "--out", str(tmp_path / "grid.png")], repo, env=stack_env(stack))
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


def test_second_repro_does_nothing_and_one_param_marks_one_model(reproduced, stack):
    """(That the marked model's stages, and only they, run again: the experiment test below.)"""
    repo, _ = reproduced
    again = sh(["dvc", "repro"], repo, env=stack_env(stack))
    assert stages_in(again.stdout) == []
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["vae"]["kl_weight"] = 0.5  # not overridden by the smoke overlay
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
    changed = {name.split(":")[-1] for name in status}
    assert changed == {"train@vae", "report"}  # dvc status shows the stages whose own inputs changed
    sh(["git", "checkout", "params.yaml"], repo)


def test_switching_profile_marks_the_stages_it_changes(reproduced):
    repo, _ = reproduced
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "default"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
    changed = {name.split(":")[-1] for name in status}
    assert {"fetch", "classifier", "report"} | {f"train@{m}" for m in MODELS} <= changed
    sh(["git", "checkout", "params.yaml"], repo)


def test_dvc_experiment_runs_and_is_listed(reproduced, stack):
    repo, _ = reproduced
    sh(["git", "checkout", "params.yaml"], repo)
    old_lr = yaml.safe_load((repo / "params.yaml").read_text())["train"]["dcgan"]["lr"]
    run = sh([sys.executable, "infra/local/with-ray", "--", "dvc", "exp", "run", "--name", "lr-up",
              "-S", f"train.dcgan.lr={old_lr * 2}"], repo, env=stack_env(stack))
    assert set(stages_in(run.stdout)) == {"train@dcgan", "sample@dcgan", "evaluate@dcgan", "report"}  # one model
    shown = sh(["dvc", "exp", "show", "--json"], repo).stdout
    assert "lr-up" in shown
    # the experiment's results are in the workspace: compare them with the committed run
    params = json.loads(sh(["dvc", "params", "diff", "--json"], repo).stdout)
    lr = params["params.yaml"]["train.dcgan.lr"]
    assert (lr["old"], lr["new"]) == (old_lr, old_lr * 2)
    metrics = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert "fid" in metrics["metrics/dcgan.json"] and "metrics/gan.json" not in metrics
    plots = repo / "plots-page"
    sh(["dvc", "plots", "show", "-o", str(plots)], repo)
    page = (plots / "index.html").read_text()
    assert "loss curves" in page or "loss_d" in page
