"""A throw-away project folder for stage tests: the repo's params and profiles, tiny settings, data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    cfg = load_config(folder / "params.yaml")
    fetch(cfg.data, folder / "data" / "prepared")
    return folder


def run_stage(project: Path, stage: str, *args: str, env: dict | None = None, check: bool = True,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m pipelines.<stage>`` in ``project`` with the repo on PYTHONPATH."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_NODE_IP_ADDRESS": HEAD_IP, "RAY_AUTH_MODE": "token", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if "MLFLOW_TRACKING_URI" not in (env or {}) else None
    run = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", *args], check=False, cwd=project, env=full_env,
                         capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"{stage} {args} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    return run


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
