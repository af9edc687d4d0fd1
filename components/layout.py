"""Where the pipeline's files live, relative to the project root: the one list of paths stages
read and write. Stage entry points take these as their arguments' defaults; ``dvc.yaml`` names
the same paths, and ``tests/test_dvc_deps.py`` checks that the two agree.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = "data/prepared"
META = f"{DATA}/meta.json"
MODELS = "models"
SAMPLES = "samples"
METRICS = "metrics"
PLOTS = "plots/train"
REPORTS = "reports"
CLASSIFIER = "classifier"  # the feature extractor's model folder and metrics name
CLASSIFIER_DIR = f"{MODELS}/{CLASSIFIER}"
CLASSIFIER_METRICS = f"{METRICS}/{CLASSIFIER}.json"
REFERENCE_FILE = "reference.npz"  # in CLASSIFIER_DIR: the real images' features
LOGS = "logs"  # each Ray job's streamed output (logs/<run name>.log) and the stages' times (stages.jsonl)
STAGE_TIMES = "stages.jsonl"  # in logs_dir()
COMPILE_CACHE = ".cache/torchinductor"  # torch.compile's kernels, kept between runs (``compile: default``)


def project_root() -> Path:
    """The project's folder, wherever the stage runs.

    ``dvc exp run --temp`` and queued experiments run the stages in a copy of the workspace under
    ``.dvc/tmp/exps/`` that DVC deletes afterwards; DVC names the project in ``DVC_ROOT``. What
    must outlive the copy (the embedded MLflow store, the logs) goes there.
    """
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def dvc_experiment() -> str | None:
    """The name of the DVC experiment this stage runs for (``DVC_EXP_NAME``), if any."""
    return os.environ.get("DVC_EXP_NAME") or None


def experiment_copy() -> str | None:
    """The experiment's name when the stage runs in DVC's temporary copy of the workspace, else None."""
    name = dvc_experiment()
    return name if name and Path.cwd().resolve() != project_root() else None


def logs_dir() -> Path:
    """``<project>/logs``, or ``<project>/logs/exps/<name>`` for a DVC experiment's stages (two
    queued experiments run at once and may run Ray jobs of the same name)."""
    name = dvc_experiment()
    return project_root() / LOGS / "exps" / name if name else project_root() / LOGS


def compile_cache_dir() -> Path:
    """``<project>/.cache/torchinductor``: inductor's on-disk cache, so a second run with
    ``compile`` on reuses the first one's kernels instead of compiling again (~30 s a network on CPU)."""
    return project_root() / COMPILE_CACHE


def model_dir(name: str) -> str:
    """``models/NAME``: a trained model's checkpoint, config, history and MLflow run id."""
    return f"{MODELS}/{name}"


def samples_dir(name: str) -> str:
    """``samples/NAME``: the model's generated and ceiling images and its grid."""
    return f"{SAMPLES}/{name}"


def metrics_file(name: str) -> str:
    """``metrics/NAME.json``: the model's scores."""
    return f"{METRICS}/{name}.json"


def plot_file(name: str) -> str:
    """``plots/train/NAME.csv``: the model's loss curve for ``dvc plots``."""
    return f"{PLOTS}/{name}.csv"


SWEEPS = "sweeps"  # sweep files (``<model>.yaml``) and the best configuration each sweep found


def sweep_file(name: str) -> str:
    """``sweeps/NAME.yaml``: the search space of a sweep of model NAME."""
    return f"{SWEEPS}/{name}.yaml"


def best_overlay_file(name: str) -> str:
    """``sweeps/NAME-best.yaml``: the best trial's values as a params overlay (``train.NAME.*``)."""
    return f"{SWEEPS}/{name}-best.yaml"
