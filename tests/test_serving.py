"""The generator pyfunc of every family: documented output form, seeded determinism, labels,
clear errors, and loading in a fresh process that has no checkout of this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serving_models import SERVED, log_tiny
from tiny_models import TINY

from components.serving.generator import decode_images

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = SERVED
CONDITIONAL = ["cgan", "ddpm-cond"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``{name: model_uri}``: one tiny generator of each family logged to a private sqlite store."""
    folder = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    uris = {name: log_tiny(uri, name, folder / name)[1] for name in FAMILIES}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield {**uris, "_tracking_uri": uri}


@pytest.fixture(scope="module")
def loaded(logged: dict[str, str]) -> dict:
    import mlflow.pyfunc

    return {name: mlflow.pyfunc.load_model(logged[name]) for name in FAMILIES}


def request(num_images: list[int], labels: list | None = None) -> pd.DataFrame:
    return pd.DataFrame({"num_images": num_images, **({"label": labels} if labels is not None else {})})


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_bytes_in_the_documented_form(loaded: dict, name: str) -> None:
    model = loaded[name]
    labels = [3, "seven"] if name in CONDITIONAL else None
    first = model.predict(request([2, 3], labels), params={"seed": 11})
    again = model.predict(request([2, 3], labels), params={"seed": 11})
    other = model.predict(request([2, 3], labels), params={"seed": 12})
    assert list(first.columns) == ["request", "label", "image"]
    assert first["request"].tolist() == [0, 0, 1, 1, 1]
    assert first["label"].tolist() == ([3, 3, 7, 7, 7] if name in CONDITIONAL else [-1] * 5)
    assert first["image"].tolist() == again["image"].tolist()  # byte-identical PNGs
    images = decode_images(first["image"].tolist())
    assert images.dtype == np.uint8 and images.shape == (5, 1, 28, 28)
    assert not np.array_equal(images, decode_images(other["image"].tolist()))
    assert len({im.tobytes() for im in images}) == 5  # distinct noise per image


@pytest.mark.parametrize("name", CONDITIONAL)
def test_labels_change_the_images(loaded: dict, name: str) -> None:
    model = loaded[name]
    images = {label: decode_images(model.predict(request([4], [label]), params={"seed": 5})["image"].tolist())
              for label in (0, 1, "1", "One")}
    assert not np.array_equal(images[0], images[1])
    assert np.array_equal(images[1], images["1"]) and np.array_equal(images[1], images["One"])


def test_cgan_without_label_cycles_the_classes_and_ddpm_samples_unconditionally(loaded: dict) -> None:
    assert loaded["cgan"].predict(request([12]))["label"].tolist() == [i % 10 for i in range(12)]
    assert loaded["ddpm-cond"].predict(request([2]))["label"].tolist() == [-1, -1]


def test_diffusion_params_are_in_the_signature_and_change_the_images(loaded: dict) -> None:
    model = loaded["ddpm-cond"]
    params = {p.name: p.default for p in model.metadata.signature.params.params}
    assert params == {"seed": 0, "sampler": "ddim", "steps": TINY["ddpm"]["sample_steps"], "guidance_scale": 1.0}
    assert {p.name for p in loaded["gan"].metadata.signature.params.params} == {"seed"}
    draws = [model.predict(request([2], [4]), params={"seed": 1, **extra})["image"].tolist()
             for extra in ({}, {"steps": 2}, {"sampler": "ancestral"}, {"guidance_scale": 0.0})]
    assert len({tuple(d) for d in draws}) == 4


@pytest.mark.parametrize(("name", "frame", "params", "message"), [
    ("gan", request([2], [3]), {}, "unconditional: it takes no label"),
    ("cgan", request([2], ["jacket"]), {}, "unknown label 'jacket'; classes are 0=zero"),
    ("cgan", request([2], [10]), {}, "label 10 out of range"),
    ("cgan", request([0], [1]), {}, "num_images must be a whole number >= 1"),
    ("gan", request([5000]), {}, "at most 4096 per call"),
    ("ddpm", request([1]), {"sampler": "euler"}, "sampler must be one of"),
    ("ddpm", request([1]), {"steps": 51}, "steps must be between 1 and the model's 50 timesteps"),
])
def test_bad_requests_are_named(loaded: dict, name: str, frame: pd.DataFrame, params: dict, message: str) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=message.replace("(", r"\(")) as err:
        loaded[name].predict(frame, params=params)
    assert err.value.get_http_status_code() == 400


def test_loads_and_generates_in_a_fresh_process_outside_the_repo(logged: dict, loaded: dict, tmp_path: Path) -> None:
    script = (
        "import json, sys, mlflow.pyfunc, numpy as np, pandas as pd, torch\n"
        "torch.set_num_threads(1)\n"
        "uris, out = json.loads(sys.argv[1]), {}\n"
        "for name, uri in uris.items():\n"
        "    frame = pd.DataFrame({'num_images': [3], 'label': [2 if name in ('cgan', 'ddpm-cond') else None]})\n"
        "    out[name] = mlflow.pyfunc.load_model(uri).predict(frame, params={'seed': 9})['image'].tolist()\n"
        "import components\n"
        "out['_components'] = components.__file__\n"
        "out['_path'] = sys.path\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_TRACKING_URI"] = logged["_tracking_uri"]
    uris = {name: logged[name] for name in FAMILIES}
    run = subprocess.run([sys.executable, "-c", script, json.dumps(uris)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert not [p for p in out["_path"] if p and (Path(p) / "components" / "serving").is_dir()
                and Path(p).resolve() == ROOT.resolve()]  # the checkout is not on the path
    assert not out["_components"].startswith(str(ROOT))  # the code came with the model
    for name in FAMILIES:
        label = [2] if name in CONDITIONAL else None
        here = loaded[name].predict(request([3], label), params={"seed": 9})["image"].tolist()
        assert out[name] == here, name


def test_requirements_are_pinned(logged: dict) -> None:
    from mlflow.artifacts import download_artifacts

    folder = Path(download_artifacts(logged["gan"]))
    pins = (folder / "requirements.txt").read_text().split()
    assert {p.split("==")[0].lower() for p in pins} >= {"mlflow", "torch", "numpy", "pydantic", "pillow", "pandas"}
    assert all("==" in p for p in pins), pins
    assert (folder / "code" / "components" / "models" / "ddpm.py").exists()


def test_the_logged_code_is_the_sources_without_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``code_paths`` copies the sources alone, also from a checkout where Python wrote bytecode.

    Checked in the store before anything loads the model: MLflow loads a model of a local store in
    place, so a process that writes bytecode adds ``__pycache__`` there later (a remote store's model
    is downloaded to a temporary folder first); that is the loader's cache, not what was logged."""
    import compileall
    import shutil

    from components.serving import pyfunc

    source = tmp_path / "checkout" / "components"
    shutil.copytree(pyfunc.COMPONENTS, source, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(source, quiet=1, force=True)  # __pycache__/, as a user's Python leaves it
    assert compileall.compile_dir(source / "serving", quiet=1, legacy=True)  # x.pyc beside x.py (compileall -b)
    assert list(source.rglob("*.pyc"))
    monkeypatch.setattr(pyfunc, "COMPONENTS", source)
    log_tiny(f"sqlite:///{tmp_path / 'mlflow.db'}", "gan", tmp_path / "gan")
    code = [p for p in (tmp_path / "artifacts").rglob("code") if p.is_dir()]
    assert len(code) == 1
    logged = {p.relative_to(code[0]).as_posix() for p in code[0].rglob("*") if p.is_file()}
    assert "components/models/gan.py" in logged
    assert logged == {p.relative_to(source.parent).as_posix() for p in source.rglob("*.py")}
