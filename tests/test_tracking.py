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
