"""components/tracking.py without a server: URI resolution and the git tags every run carries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from components import provenance, tracking
from components.config import MlflowConfig


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_dirty_ignores_dvc_lock_but_not_code(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert provenance.git_info(tmp_path) == {"git_commit": head, "git_dirty": "False"}
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")  # written by the run being tagged
    assert provenance.git_info(tmp_path)["git_dirty"] == "False"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_info(tmp_path)["git_dirty"] == "True"


def test_git_info_outside_a_repository_says_unknown(tmp_path: Path) -> None:
    assert provenance.git_info(tmp_path) == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(MlflowConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.resolve_tracking_uri(MlflowConfig(tracking_uri="http://x:5000"), tmp_path) == "http://x:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_tracking_uri(MlflowConfig(tracking_uri="http://x:5000"), tmp_path) == "http://env:5000"


def test_a_dvc_experiments_copy_tracks_into_the_projects_store_and_names_itself(tmp_path: Path, monkeypatch) -> None:
    """`dvc exp run --temp` / queued: the stage runs in a copy under .dvc/tmp/exps and DVC names the
    project in DVC_ROOT. The store, the experiment's artifacts and the logs are the project's; Ray
    run names carry the experiment (shared checkpoint storage); runs are tagged with it."""
    from components import layout
    from components.distributed.runner import run_name

    project, copy = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "brave-fox")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    uri = tracking.resolve_tracking_uri(MlflowConfig())
    assert uri == f"sqlite:///{project.resolve()}/mlflow.db"
    assert layout.logs_dir() == project.resolve() / "logs" / "exps" / "brave-fox"
    assert layout.experiment_copy() == "brave-fox" and run_name("train-gan", {"a": 1}).startswith("train-gan-brave-fox-")
    assert provenance.experiment_info() == {"dvc_exp_name": "brave-fox", "dvc_exp_baseline_rev": "0123abc"}
    experiment = tracking.client(uri).get_experiment(tracking.get_or_create_experiment(uri, "genmodels-x"))
    assert experiment.artifact_location == (project.resolve() / "mlruns" / "genmodels-x").as_uri()  # not in the copy
    assert tracking.get_or_create_experiment(uri, "genmodels-x") == experiment.experiment_id

    monkeypatch.chdir(project)  # `dvc exp run` in the workspace: no copy, the same store and tags
    assert layout.experiment_copy() is None and run_name("train-gan", {"a": 1}).startswith("train-gan-")
    assert "brave-fox" not in run_name("train-gan", {"a": 1})
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):  # no DVC at all: the working folder
        monkeypatch.delenv(var)
    assert layout.logs_dir() == project.resolve() / "logs" and provenance.experiment_info() == {}


def test_model_run_logs_and_ends_its_run_with_the_right_status(tmp_path: Path) -> None:
    import numpy as np
    import pytest

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = {name: tracking.ModelRun.start(uri, "e", name, {"stage": name}, {"p": 1}) for name in ("ok", "failed", "kept")}
    with runs["ok"] as run:
        run.log_metrics({"eval/fid": 1.5, "eval/flag": True, "name": "x"})
        run.set_tags({"extractor_checksum": "abc"})
        run.log_image(np.zeros((4, 4), dtype=np.uint8), key="final_samples")
    with pytest.raises(RuntimeError), runs["failed"]:
        raise RuntimeError("stage failed")
    runs["kept"].save(tmp_path / "kept")  # what the train stage leaves in models/NAME
    with tracking.ModelRun.attach(tmp_path / "kept", uri) as run:  # what sample and evaluate do
        assert (run.run_id, run.experiment, run.end) == (runs["kept"].run_id, "e", False)
        run.log_metrics({"sample/seconds": 2.0})
    client = tracking.client(uri)
    ok = client.get_run(runs["ok"].run_id)
    assert ok.info.status == "FINISHED" and ok.data.metrics == {"eval/fid": 1.5}
    assert ok.data.tags["extractor_checksum"] == "abc"
    assert any("final_samples" in a.path for a in client.list_artifacts(runs["ok"].run_id, "images"))
    assert client.get_run(runs["failed"].run_id).info.status == "FAILED"
    assert client.get_run(runs["kept"].run_id).info.status == "RUNNING"  # ended by the stage that opened it
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        tracking.ModelRun.attach(tmp_path / "never-trained", uri)


def test_an_interrupted_run_ends_killed_and_is_re_attached_through_its_marker(tmp_path: Path) -> None:
    import pytest

    uri, marker = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray_results" / ".mlflow_runs" / "train-m"
    first = tracking.ModelRun.start(uri, "e", "m", {"stage": "train@m"}, {"p": 1}, marker=marker)
    assert marker.read_text() == first.run_id
    with pytest.raises(KeyboardInterrupt), first:
        raise KeyboardInterrupt
    client = tracking.client(uri)
    assert client.get_run(first.run_id).info.status == "KILLED" and marker.exists()
    retry = tracking.ModelRun.start(uri, "e", "m", {"stage": "train@m"}, {"p": 1}, marker=marker)
    assert retry.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"  # the retry's own `with` ends it
    with retry:
        pass
    assert client.get_run(first.run_id).info.status == "FINISHED" and not marker.exists()
    assert tracking.ModelRun.start(uri, "e", "m", {"stage": "train@m"}, {"p": 1}, marker=marker).run_id != first.run_id


def test_writes_that_never_arrive_are_counted_in_a_tag_on_the_run(tmp_path: Path) -> None:
    """A metric the store refuses on every retry is reported by close() and the run says so."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "m", {"stage": "train@m"}, {"p": 1})
    logger = tracking.RunLogger(uri, run_id, retries=1)
    logger.log_metrics({"train/loss": 1.0}, step=1)
    logger.log_metrics({"train/loss": float("nan"), "bad key!": 2.0}, step=2)  # an invalid name: refused
    errors = logger.close()
    assert len(errors) == 1 and "log_batch" in errors[0]
    run = tracking.client(uri).get_run(run_id)
    assert run.data.tags[tracking.LOST_WRITES_TAG] == "1"
    good = tracking.RunLogger(uri, tracking.start_run(uri, "e", "n", {"stage": "train@n"}, {"p": 1}))
    good.log_metrics({"train/loss": 1.0}, step=1)
    assert good.close() == []
    assert tracking.LOST_WRITES_TAG not in tracking.client(uri).get_run(good.run_id).data.tags
