"""Where a run's code came from: the git commit and the versions of the libraries that decide its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_info(root: str | Path = ".") -> dict[str, str]:
    """Current commit and whether the work tree has uncommitted changes (in the image: its build's commit).

    ``dvc.lock`` does not count: DVC rewrites it after every stage of the very run being tagged.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock")))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        # The project image has no .git; its build recorded the commit (GENMODELS_GIT_COMMIT).
        return {"git_commit": os.environ.get("GENMODELS_GIT_COMMIT", "unknown"), "git_dirty": "unknown"}


def experiment_info() -> dict[str, str]:
    """The DVC experiment a run belongs to (``dvc exp run``, ``--temp``, ``--queue``), else ``{}``:
    its name and the commit it was branched from, as DVC passes them to every stage."""
    names = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_exp_baseline_rev"}
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def image_info() -> dict[str, str]:
    """``{"image": <ref@sha256:...>}`` when running in the project image, else ``{}``.

    An image cannot hold its own digest, so the launcher (infra/compose, KubeRay, ``ray up``) sets
    ``GENMODELS_IMAGE`` to the pinned reference it started the container from.
    """
    image = os.environ.get("GENMODELS_IMAGE", "")
    return {"image": image} if image else {}


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
