"""Where a run's code came from: the git commit and the versions of the libraries that decide its numbers."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def git_info(root: str | Path = ".") -> dict[str, str]:
    """Current commit and whether the work tree has uncommitted changes.

    ``dvc.lock`` does not count: DVC rewrites it after every stage of the very run being tagged.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock")))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "ray", "mlflow", "dvc", "pydantic", "torchmetrics"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
