"""What ``python -m pipelines.generate`` does: find a generator (local checkpoint or registry URI),
answer one request, write a grid PNG or an ``.npz`` of uint8 arrays atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components import layout
from components.serving.generator import Generated, Generator


class GenerateError(Exception):
    """A model that cannot be found or loaded, an unreachable registry, a bad output path."""


def local_generator(models_dir: str | Path, name: str, data_dir: str | Path = layout.DATA) -> Generator:
    """The generator of ``models_dir/name/checkpoint.pt``; class names from the prepared data's meta.json.

    Raises:
        GenerateError: no such trained model (the message lists the ones there are).
    """
    folder = Path(models_dir) / name
    if not (folder / "checkpoint.pt").exists():
        there = sorted(p.parent.name for p in Path(models_dir).glob("*/checkpoint.pt") if p.parent.name != layout.CLASSIFIER)
        raise GenerateError(f"unknown model {name!r}: no {folder / 'checkpoint.pt'} (trained models: {there or 'none'})")
    meta = Path(data_dir) / "meta.json"
    classes = json.loads(meta.read_text()).get("class_names") if meta.exists() else None
    try:
        return Generator.from_checkpoint(folder / "checkpoint.pt", classes)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise GenerateError(f"{folder / 'checkpoint.pt'} cannot be loaded as a generator: {exc}") from None


def registered_generator(model_uri: str, tracking_uri: str) -> Generator:
    """The generator inside the pyfunc at ``model_uri`` (``models:/NAME@champion``, ``models:/NAME/3``, ...).

    Raises:
        GenerateError: the registry is unreachable, or has no such model, version or alias.
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from components.serving.pyfunc import GeneratorPyfunc
    from components.tracking import TrackingError, check_reachable

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise GenerateError(f"no MLflow store at {tracking_uri}: run the pipeline here, or set MLFLOW_TRACKING_URI")
    try:
        check_reachable(tracking_uri, timeout_s=5)
    except TrackingError as exc:
        raise GenerateError(str(exc)) from None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except MlflowException as exc:
        raise GenerateError(f"{model_uri} not found in {tracking_uri}: {exc.message.splitlines()[0]}") from None
    except OSError as exc:
        raise GenerateError(f"{model_uri} could not be downloaded from {tracking_uri}: {exc}") from None
    if not isinstance(python_model, GeneratorPyfunc):
        raise GenerateError(f"{model_uri} is not a genmodels generator ({type(python_model).__name__})")
    return python_model.generator


def write_images(generated: Generated, out: str | Path) -> Path:
    """``.png``: a grid, one row per class when labelled (else about square); ``.npz``: ``images``
    ``(N, C, H, W)`` uint8 and ``labels`` ``(N,)`` int64 (-1 = unconditioned). Written atomically."""
    from components.io import atomic_path
    from components.report.grid import make_grid

    out = Path(out)
    if out.suffix not in (".png", ".npz"):
        raise GenerateError(f"--out must end in .png (a grid) or .npz (arrays), got {out}")
    with atomic_path(out) as tmp:
        if out.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, images=generated.images, labels=generated.labels)
        else:
            from PIL import Image

            n = len(generated.images)
            rows = max(1, int(np.floor(np.sqrt(n))))
            Image.fromarray(make_grid(generated.images, rows=rows)).save(tmp, format="png")
    return out
