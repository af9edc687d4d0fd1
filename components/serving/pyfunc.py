"""Each trained generator as an MLflow pyfunc: checkpoint + class names + this package's code,
pinned requirements and a signature whose params are the inference options.

Request: a table, one row per ask: ``num_images`` (int >= 1) and, for conditional models,
``label`` (class index or class name; empty = unconditioned). Params: ``seed`` (int, default 0)
and, for diffusion, ``sampler`` (``ddim`` | ``ancestral``), ``steps`` (DDIM steps) and, when
conditional, ``guidance_scale``. Response: one row per image: ``request`` (input row),
``label`` (class used, -1 = none) and ``image``, a **base64-encoded PNG** (greyscale for one
channel). PNG rather than nested uint8 lists: lossless (``decode_images`` gives back the exact
uint8 array and its shape), a sixth of the JSON size of a 28x28 list of numbers, and what any
HTTP client can save or show without knowing this project.

MLflow is imported here only; the model classes stay free of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.serving.generator import GenerationError, Generator

ARTIFACT_PATH = "generator"
#: Run tag holding the logged generator's ``models:/<model id>`` URI (read by the registry step).
MODEL_URI_TAG = "generator_model_uri"
#: What the code in ``components/`` imports when it generates (torch is pinned without a local suffix).
REQUIREMENTS = ("torch", "numpy", "pandas", "pydantic", "PyYAML", "pillow", "tqdm")
COMPONENTS = Path(__file__).resolve().parents[1]


class GeneratorPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc: loads the checkpoint artifact, rebuilds the model from its config, samples."""

    def load_context(self, context: Any) -> None:
        import torch

        classes = json.loads(Path(context.artifacts["classes"]).read_text())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.generator = Generator.from_checkpoint(context.artifacts["checkpoint"], classes, device)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Images for each row of ``model_input`` (see the module docstring for the columns)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from components.serving.generator import encode_png

        params = params or {}
        frame = pd.DataFrame(model_input)
        if "num_images" not in frame.columns:
            raise MlflowException("each request row needs num_images", error_code=INVALID_PARAMETER_VALUE)
        labels = [None if _missing(x) else x for x in frame["label"]] if "label" in frame.columns else [None] * len(frame)
        try:
            out = self.generator.generate(list(zip(frame["num_images"].tolist(), labels, strict=True)),
                                          seed=int(params.get("seed", 0)), sampler=params.get("sampler"),
                                          steps=params.get("steps"), guidance_scale=params.get("guidance_scale"))
        except GenerationError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame({"request": out.request, "label": out.labels,
                             "image": [encode_png(image) for image in out.images]})


def _missing(value: Any) -> bool:
    """An empty cell (None, NaN, pd.NA) of a mixed-type column."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or other non-scalar: not missing, rejected as a label later
        return False


def signature_for(model: Any) -> Any:
    """The request/response schema and the inference params of ``model`` (a GenerativeModel)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("long", "num_images"), ColSpec(AnyType(), "label", required=False)])
    outputs = Schema([ColSpec("long", "request"), ColSpec("long", "label"), ColSpec("string", "image")])
    params = [ParamSpec("seed", "long", 0)]
    params += [ParamSpec(option.name, option.type, option.default) for option in model.sampling_options()]
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema(params))


def pinned_requirements() -> list[str]:
    """``name==version`` of what the generator imports, as installed here (MLflow adds itself)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


@contextlib.contextmanager
def _known_logging_notices_silenced() -> Iterator[None]:
    """MLflow's two notices for every save of this pyfunc, each a deliberate choice here:
    the model is a Python object (cloudpickled; its class travels in ``code_paths``), and it has a
    signature but no input example (an example would be a request the model answers at log time)."""
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        pyfunc_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            pyfunc_logger.setLevel(level)


def log_generator(uri: str, run_id: str, checkpoint: str | Path, class_names: list[str]) -> str:
    """Log the pyfunc into run ``run_id`` as an MLflow LoggedModel; returns its ``models:/<model id>``
    URI (also tagged on the run, ``MODEL_URI_TAG``). ``tracking.ModelRun.log_generator`` is the
    stages' door to it.

    Client calls only (no fluent ``set_tracking_uri``/``start_run`` globals): what
    ``mlflow.pyfunc.log_model`` does, step by step: create the LoggedModel, link it to the run as an
    output, save the pyfunc into a temporary folder, upload that folder, mark the model READY (FAILED
    if any step raises). The code travels as ``code_paths`` (a copy of ``components/`` without
    caches), so the model loads in a process that has no checkout of this repository.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from components.tracking import client
    from components.training.checkpoint import model_from_checkpoint

    c = client(uri)
    run = c.get_run(run_id)
    signature = signature_for(model_from_checkpoint(checkpoint))
    logged = c.create_logged_model(run.info.experiment_id, name=ARTIFACT_PATH, source_run_id=run_id,
                                   params=dict(run.data.params))
    try:
        c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="generator-") as tmp:
            code = Path(tmp) / "components"
            shutil.copytree(COMPONENTS, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            classes = Path(tmp) / "classes.json"
            classes.write_text(json.dumps(list(class_names)))
            local = Path(tmp) / "model"
            meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                         model_id=logged.model_id)
            with _known_logging_notices_silenced():
                mlflow.pyfunc.save_model(
                    str(local), python_model=GeneratorPyfunc(), code_paths=[str(code)], mlflow_model=meta,
                    artifacts={"checkpoint": str(checkpoint), "classes": str(classes)},
                    signature=signature, pip_requirements=pinned_requirements())
            for cache in local.rglob("__pycache__"):  # save_model loads the model once to check it
                shutil.rmtree(cache, ignore_errors=True)
            c.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        c.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    c.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    model_uri = f"models:/{logged.model_id}"
    c.set_tag(run_id, MODEL_URI_TAG, model_uri)
    return model_uri
