"""`dvc repro` end to end on the smoke profile: real Ray, real MLflow store, all five families."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gan", "cgan", "dcgan", "vae", "ddpm"]


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if check and run.returncode != 0:
        raise AssertionError(f"{cmd} failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}")
    return run


def stages_in(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the repository (tracked files) as its own git repo, switched to the smoke profile."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("profile: default", "profile: smoke", 1))
    sh(["git", "init", "-q"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x", "--allow-empty"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], repo)
    return repo


@pytest.fixture(scope="module")
def reproduced(repo) -> tuple[Path, str]:
    run = sh([sys.executable, "infra/local/with-ray", "--", "dvc", "repro"], repo)
    return repo, run.stdout


def test_every_stage_ran(reproduced):
    _, output = reproduced
    ran = stages_in(output)
    expected = {"fetch", "evaluator", "report"} | {f"{s}@{m}" for s in ("train", "sample", "evaluate") for m in MODELS}
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


def test_five_mlflow_runs_with_curves_images_and_eval_metrics(reproduced):
    repo, _ = reproduced
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("genmodels-smoke-synthetic")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
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


def test_report_lists_every_model(reproduced):
    repo, _ = reproduced
    page = (repo / "reports" / "index.html").read_text()
    for model in MODELS:
        assert model in page
    board = (repo / "reports" / "leaderboard.md").read_text()
    assert board.count("|") > 30 and "floor" in board.lower()


def test_second_repro_does_nothing_and_one_param_reruns_one_model(reproduced):
    repo, _ = reproduced
    again = sh(["dvc", "repro"], repo)
    assert stages_in(again.stdout) == []
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["vae"]["kl_weight"] = 0.5  # not overridden by the smoke overlay
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
    changed = {name.split(":")[-1] for name in status}
    assert changed == {"train@vae", "report"}  # dvc status shows the stages whose own inputs changed
    rerun = sh([sys.executable, "infra/local/with-ray", "--", "dvc", "repro"], repo)
    assert set(stages_in(rerun.stdout)) == {"train@vae", "sample@vae", "evaluate@vae", "report"}


def test_switching_profile_marks_the_stages_it_changes(reproduced):
    repo, _ = reproduced
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "default"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(sh(["dvc", "status", "--json"], repo).stdout)
    changed = {name.split(":")[-1] for name in status}
    assert {"fetch", "evaluator", "report"} | {f"train@{m}" for m in MODELS} <= changed
    sh(["git", "checkout", "params.yaml"], repo)


def test_dvc_experiment_runs_and_is_listed(reproduced):
    repo, _ = reproduced
    sh(["git", "checkout", "params.yaml"], repo)
    run = sh([sys.executable, "infra/local/with-ray", "--", "dvc", "exp", "run", "--name", "lr-up",
              "-S", "train.dcgan.lr=0.0004"], repo)
    assert set(stages_in(run.stdout)) == {"train@dcgan", "sample@dcgan", "evaluate@dcgan", "report"}
    shown = sh(["dvc", "exp", "show", "--json"], repo).stdout
    assert "lr-up" in shown
    diff = sh(["dvc", "params", "diff", "--all", "--json"], repo).stdout
    assert isinstance(json.loads(diff), dict)
