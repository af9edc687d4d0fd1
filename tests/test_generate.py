"""``python -m pipelines.generate``: a local model or a registry URI to a grid or arrays; one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from project import run_stage
from servers import free_port
from serving_models import CLASS_NAMES, log_tiny, tiny_checkpoint

from components.model_registry import register_run


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with trained tiny models (gan registered in a sqlite store, cgan local only) and meta.json."""
    folder = tmp_path_factory.mktemp("generate")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    run_id, _ = log_tiny(uri, "gan", folder / "logged" / "gan")
    register_run(uri, run_id, "genmodels", "gan", {"fid": 10.0, "extractor_checksum": "x", "family": "gan"})
    (folder / "models" / "gan").mkdir(parents=True)
    shutil.copy(folder / "logged" / "gan" / "checkpoint.pt", folder / "models" / "gan" / "checkpoint.pt")
    tiny_checkpoint("cgan", folder / "models" / "cgan")
    (folder / "data" / "prepared").mkdir(parents=True)
    (folder / "data" / "prepared" / "meta.json").write_text(json.dumps({"class_names": CLASS_NAMES}))
    return folder


def generate(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_stage(project, "generate", *args, tracking="local", env=env, check=False, timeout=300)


def test_local_conditional_model_to_arrays_and_grid(project: Path) -> None:
    runs = [generate(project, "--model", "cgan", "-n", "6", "--label", "Two", "--seed", "3", "--out", out)
            for out in ("a.npz", "b.npz", "grid.png")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    a, b = np.load(project / "a.npz"), np.load(project / "b.npz")
    assert a["images"].dtype == np.uint8 and a["images"].shape == (6, 1, 28, 28)
    assert a["labels"].tolist() == [2] * 6
    assert np.array_equal(a["images"], b["images"])  # same seed, same bytes
    assert (project / "grid.png").read_bytes().startswith(b"\x89PNG")
    assert "generate: 6 images" in runs[2].stdout


def test_registry_uri_gives_the_same_images_as_the_local_checkpoint(project: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    registered = generate(project, "--uri", "models:/genmodels-gan@champion", "-n", "4", "--seed", "8",
                          "--out", "reg.npz", env=env)
    assert registered.returncode == 0, registered.stderr[-2000:]
    local = generate(project, "--model", "gan", "-n", "4", "--seed", "8", "--out", "loc.npz")
    assert local.returncode == 0, local.stderr[-2000:]
    assert np.array_equal(np.load(project / "reg.npz")["images"], np.load(project / "loc.npz")["images"])


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--model", "cgan", "--label", "jacket"], {}, "error: unknown label 'jacket'; classes are 0=zero"),
    (["--model", "gan", "--label", "3"], {}, "error: this gan model is unconditional"),
    (["--model", "nope"], {}, "error: unknown model 'nope': no models/nope/checkpoint.pt (trained models: ['cgan', 'gan'])"),
    (["--uri", "models:/genmodels-nope@champion"], "sqlite", "error: models:/genmodels-nope@champion not found in"),
    (["--uri", "models:/genmodels-gan@champion"], "down", "is unreachable"),
])
def test_errors_are_one_line_with_exit_2(project: Path, args: list[str], env: str | dict, message: str) -> None:
    if env == "sqlite":
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    elif env == "down":
        env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    run = generate(project, *args, "--out", "x.png", env=env)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not (project / "x.png").exists()
