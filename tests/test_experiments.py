"""DVC experiments keep their records: `dvc exp run --temp` and queued experiments run in copies of
the workspace that DVC deletes, yet every run, artifact and registered version lands in the
project's one MLflow store, tagged with the experiment's name; queued ones share one Ray head
(`infra/local/run-queue`).

One project on the smoke profile, targets `evaluate@vae` (fetch, classifier, train, sample and
evaluate of one model): the queued experiments restore fetch and the classifier from DVC's run
cache, as a user's would.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from project import git_project, run_command

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], repo: Path) -> str:
    """``cmd`` in ``repo`` as a user runs it: the venv first on PATH, no MLflow or Ray settings."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": ""}
    done = run_command(cmd, repo, tracking="isolated", env=env, timeout=900)
    return done.stdout + done.stderr


def exp_metrics(repo: Path) -> dict[str, dict]:
    """``{experiment name: metrics/vae.json}`` as `dvc exp show --json` reports them."""
    shown = json.loads(run([str(VENV_BIN / "dvc"), "exp", "show", "--json"], repo))
    out = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                if rev.get("name") and "metrics/vae.json" in (data.get("metrics") or {}):
                    out[rev["name"]] = data["metrics"]["metrics/vae.json"]["data"]
    return out


def test_temp_and_queued_experiments_keep_every_record_in_the_project_store(tmp_path: Path) -> None:
    repo = git_project(tmp_path / "repo", {"ray": {"num_workers": 1}})
    dvc, py = str(VENV_BIN / "dvc"), sys.executable
    with_ray = [py, "infra/local/with-ray", "--no-dashboard", "--"]

    run([*with_ray, dvc, "exp", "run", "--temp", "-S", "train.vae.lr=0.002", "evaluate@vae"], repo)
    for lr in ("0.003", "0.0005"):
        run([dvc, "exp", "run", "--queue", "-S", f"train.vae.lr={lr}", "evaluate@vae"], repo)
    queued = run([py, "infra/local/run-queue", "-j", "2", "--no-dashboard"], repo)
    assert "2 succeeded, 0 failed" in queued, queued

    metrics = exp_metrics(repo)
    assert len(metrics) == 3, metrics  # the temp experiment and the two queued ones
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert runs and all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    vae_runs = {r.data.tags["dvc_exp_name"]: r for r in runs if r.info.run_name == "vae"}
    assert set(vae_runs) == set(metrics)  # one run per experiment, tagged with its name
    for name, run_ in vae_runs.items():
        assert run_.data.tags["dvc_exp_baseline_rev"]
        logged = {k.removeprefix("eval/"): v for k, v in run_.data.metrics.items() if k.startswith("eval/")}
        shown = {k: v for k, v in metrics[name].items() if isinstance(v, float | int) and not isinstance(v, bool)}
        assert shown and all(math.isclose(logged[k], v, rel_tol=1e-9) for k, v in shown.items() if k in logged), name
        assert math.isclose(logged["fid"], metrics[name]["fid"], rel_tol=1e-9)
        # artifacts beside the store, not in the deleted copy
        checkpoints = client.list_artifacts(run_.info.run_id, "checkpoints")
        assert checkpoints, name
    for e in experiments:
        if e.name != "Default":
            assert e.artifact_location.startswith((repo / "mlruns").as_uri()), e.artifact_location
    versions = client.search_model_versions("name='genmodels-vae'")
    assert sorted(v.tags["dvc_exp_name"] for v in versions) == sorted(metrics)
    for v in versions:
        assert Path(v.source.removeprefix("file://")).is_dir(), v.source  # the registered generator's files exist
    # each experiment's Ray output and stage times under logs/exps/<name>/ of the project
    for name in metrics:
        assert (repo / "logs" / "exps" / name / "stages.jsonl").exists(), name
