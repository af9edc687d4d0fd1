"""A throw-away project folder for stage tests: the repo's params and profiles, tiny settings, data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import yaml
from servers import HEAD_IP

from components.config import deep_merge, load_config
from components.data.fetch import fetch

ROOT = Path(__file__).resolve().parents[1]

#: Tiny settings on top of the smoke profile: stage tests are about plumbing, not quality.
TINY = {
    "data": {"synthetic_train_size": 512, "synthetic_test_size": 256, "train_subset": 512, "test_subset": 256},
    "ray": {"num_workers": 2, "max_failures": 1},
    "mlflow": {"log_system_metrics": False},
    "sample": {"num_samples": 200, "ceiling_samples": 100, "batch_size": 50, "grid_size": 4},
    "evaluate": {"num_samples": 200, "kid_subset_size": 50, "batch_size": 100},
    "classifier": {"min_test_accuracy": 0.0},
}


def make_project(folder: Path, overrides: dict | None = None) -> Path:
    """Write params.yaml (+ profiles/) into ``folder`` and fetch the synthetic data there."""
    write_params(folder, overrides)
    cfg = load_config(folder / "params.yaml")
    fetch(cfg.data, folder / "data" / "prepared")
    return folder


def write_params(folder: Path, overrides: dict | None = None) -> Path:
    """params.yaml (profile smoke) and profiles/ into ``folder``, the smoke overlay made tiny (``TINY``,
    then ``overrides``)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "profiles").mkdir(exist_ok=True)
    for overlay in (ROOT / "profiles").glob("*.yaml"):
        (folder / "profiles" / overlay.name).write_text(overlay.read_text())
    # the tiny settings go into the smoke overlay: it outranks params.yaml
    smoke = deep_merge(yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text()), deep_merge(TINY, overrides or {}))
    (folder / "profiles" / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    return folder


#: What a test's subprocess keeps of this process' environment, where tracking and servers go:
#:
#: - ``"local"``: everything but ``MLFLOW_TRACKING_URI``: a stage tracks into its default store
#:   (sqlite in its working folder) unless ``env`` names another; S3 and Ray settings pass through.
#: - ``"isolated"``: none of the ``AWS_*``, ``MLFLOW_*``, ``RAY_ADDRESS`` or ``STACK_*`` variables:
#:   only ``env`` points the process at servers (what a user has after ``eval "$(stack env)"``).
Tracking = Literal["local", "isolated"]
_DROPPED: dict[str, tuple[str, ...]] = {"local": ("MLFLOW_TRACKING_URI",),
                                        "isolated": ("AWS_", "MLFLOW_", "RAY_ADDRESS", "STACK_")}


def run_command(cmd: Sequence[str], cwd: Path, *, tracking: Tracking, env: Mapping[str, str] | None = None,
                check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd``, output captured: the one way the tests start a stage (or DVC) as a subprocess.

    Args:
        cmd: the command line.
        cwd: its working folder.
        tracking: which of this process' MLflow and server variables it inherits (see ``Tracking``).
        env: variables set on top (they win over what ``tracking`` keeps or drops).
        check: raise ``AssertionError`` with the output's tail if it exits non-zero.
        timeout: seconds before it is killed.
    """
    kept = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED[tracking])}
    run = subprocess.run(list(cmd), check=False, cwd=cwd, env={**kept, **(env or {})}, capture_output=True, text=True,
                         timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"{list(cmd)} failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}")
    return run


def run_stage(project: Path, stage: str, *args: str, tracking: Tracking, env: Mapping[str, str] | None = None,
              check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m pipelines.<stage> ARGS`` in ``project`` with the repo on PYTHONPATH (``run_command``)."""
    stage_env = {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_NODE_IP_ADDRESS": HEAD_IP,
                 "RAY_AUTH_MODE": "token", **(env or {})}
    return run_command([sys.executable, "-m", f"pipelines.{stage}", *args], project, tracking=tracking, env=stage_env,
                       check=check, timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def git_project(folder: Path, overrides: dict | None = None) -> Path:
    """A git + DVC repository holding this checkout's files (as a clone would, plus what is not yet
    committed; no dvc.lock), on the tiny smoke profile (``write_params(folder, overrides)``), committed."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split()
    for name in listed:
        if name != "dvc.lock" and (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    write_params(folder, overrides)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=folder, check=True)
    return folder
