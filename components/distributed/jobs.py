"""What a worker body is given: one small, frozen spec per kind of job, and the one function that builds each.

A spec crosses the process boundary (Ray pickles it into every worker's task, wrapped as
``train_loop_config={"job": spec}``), so it holds the validated config section, names, where to
log and, for inference, the model weights (a few MB: a worker on another node cannot read the
driver's disk); never data, which reaches the workers through Ray Data (``runner.run_job``'s
``datasets``; ``runner.check_small`` refuses an array here).

| spec | worker body | built by |
|---|---|---|
| ``TrainJob`` | ``train_jobs.train_job`` | ``TrainJob.from_config`` (the train stage) |
| ``ClassifierJob`` | ``train_jobs.classifier_job`` | ``ClassifierJob.from_config`` (the classifier stage) |
| ``SampleJob`` | ``inference_jobs.sample_job`` | ``SampleJob.from_config`` (the sample stage) |
| ``FeaturesJob`` | ``inference_jobs.features_job`` | ``FeaturesJob.from_config`` (the evaluate stage) |

Frozen dataclasses rather than pydantic models: every field comes from an already validated
``PipelineConfig`` or from our own code, so there is nothing left to validate, and a dataclass
pickles as its fields (the config sections inside are the pydantic models themselves).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.config import LoadingConfig, PipelineConfig, TrainBase
from components.data.spec import DataSpec
from components.training.checkpoint import CHECKPOINT_FILE


@dataclass(frozen=True, slots=True)
class Tracking:
    """Where rank 0 of a training job logs: the MLflow store and the run the stage created."""

    uri: str
    run_id: str
    system_metrics: bool


@dataclass(frozen=True, slots=True)
class TrainJob:
    """Train one model (``train_jobs.train_job``) on the job's ``train`` data source.

    Attributes:
        name: the model's name (progress, checkpoints).
        config: its validated training section (``ClassifierConfig`` for the classifier).
        data: image shape and class count.
        rows: images in the ``train`` source (all ranks together).
        loading: how each rank holds its share; ``mode`` resolved to ``memory`` or ``stream``.
        tracking: where rank 0 logs; None: nowhere.
        grid_seed: seed of the sample grids logged during training.
        progress: rank 0 shows a progress bar.
    """

    name: str
    config: TrainBase
    data: DataSpec
    rows: int
    loading: LoadingConfig
    tracking: Tracking | None
    grid_seed: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: PipelineConfig, name: str, data: DataSpec, rows: int, *, workers: int, uri: str,
                    run_id: str) -> TrainJob:
        """The train stage's job for the model ``name`` (a section of ``cfg.train``).

        Args:
            cfg: the validated pipeline config.
            name: the model.
            data: the prepared data's shape and classes (``spec_from_meta``).
            rows: images in its train split (``split_rows``).
            workers: the ranks that share the data (1 in ``--plain``).
            uri: the MLflow tracking URI.
            run_id: the model's MLflow run.
        """
        return _training(cfg, name, cfg.train[name], data, rows, workers,
                         Tracking(uri, run_id, cfg.mlflow.log_system_metrics))


@dataclass(frozen=True, slots=True)
class ClassifierJob:
    """Train the classifier, then embed the image sources ``image_sets`` (``train_jobs.classifier_job``)."""

    train: TrainJob
    image_sets: tuple[str, ...]
    batch_size: int

    @classmethod
    def from_config(cls, cfg: PipelineConfig, data: DataSpec, rows: int, *, workers: int, uri: str, run_id: str,
                    image_sets: tuple[str, ...]) -> ClassifierJob:
        """The classifier stage's job: ``cfg.classifier`` trained on the train split (``data``,
        ``rows``, ``workers``, ``uri``, ``run_id`` as for ``TrainJob.from_config``), then the named
        reference sets embedded in batches of ``cfg.evaluate.batch_size`` (no system metrics: the
        classifier's run is not compared with the models')."""
        train = _training(cfg, "classifier", cfg.classifier, data, rows, workers, Tracking(uri, run_id, False))
        return cls(train=train, image_sets=tuple(sorted(image_sets)), batch_size=cfg.evaluate.batch_size)


def resolved_loading(cfg: LoadingConfig, data: DataSpec, rows: int, world_size: int) -> LoadingConfig:
    """``cfg`` with ``mode`` resolved (``auto`` by the size of a rank's share of ``rows`` images)."""
    pixel_bytes = rows * data.channels * data.height * data.width
    return cfg.model_copy(update={"mode": cfg.resolve(pixel_bytes, world_size)})


def _training(cfg: PipelineConfig, name: str, config: TrainBase, data: DataSpec, rows: int, workers: int,
              tracking: Tracking) -> TrainJob:
    return TrainJob(name=name, config=config, data=data, rows=rows,
                    loading=resolved_loading(cfg.data.loading, data, rows, workers), tracking=tracking,
                    grid_seed=cfg.sample.seed, progress=True)


@dataclass(frozen=True, slots=True)
class SampleSet:
    """One image set to draw: from which weights (a checkpoint file's bytes), how many images."""

    checkpoint: bytes
    num_samples: int


@dataclass(frozen=True, slots=True)
class SampleJob:
    """Draw named image sets in fixed chunks (``inference_jobs.sample_job``).

    Attributes:
        name: the model's name (progress).
        sets: set name -> what to draw; set ``i`` in name order draws from ``seed + i``.
        batch_size: images per chunk.
        seed: the base seed.
    """

    name: str
    sets: Mapping[str, SampleSet]
    batch_size: int
    seed: int

    @classmethod
    def from_config(cls, cfg: PipelineConfig, name: str, model_dir: str | Path) -> SampleJob:
        """The sample stage's job: ``samples`` from the trained checkpoint in ``model_dir``, and
        ``ceiling`` from the same architecture and seed untrained (the metrics' ceiling row)."""
        trained = Path(model_dir) / CHECKPOINT_FILE
        scfg = cfg.sample
        sets = {"samples": SampleSet(trained.read_bytes(), scfg.num_samples),
                "ceiling": SampleSet(_untrained(trained), scfg.ceiling_samples)}
        return cls(name=name, sets=sets, batch_size=scfg.batch_size, seed=scfg.seed)


def _untrained(checkpoint_path: Path) -> bytes:
    """A checkpoint of the same architecture and seed at initialisation (the ceiling model)."""
    import torch

    from components.config import model_config_from_dict
    from components.models import build_model
    from components.training.checkpoint import checkpoint_payload, load_checkpoint

    payload = load_checkpoint(checkpoint_path)
    model = build_model(model_config_from_dict(payload["config"]), DataSpec(**payload["data_spec"]))
    buffer = io.BytesIO()
    torch.save(checkpoint_payload(model, name=payload["name"] + "-untrained", epoch=0), buffer)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class FeaturesJob:
    """Embed the image sources ``image_sets`` with the classifier (``inference_jobs.features_job``)."""

    checkpoint: bytes
    image_sets: tuple[str, ...]
    batch_size: int

    @classmethod
    def from_config(cls, cfg: PipelineConfig, classifier_dir: str | Path, image_sets: tuple[str, ...]) -> FeaturesJob:
        """The evaluate stage's job: the classifier stage's checkpoint, sets embedded in batches of
        ``cfg.evaluate.batch_size``."""
        return cls(checkpoint=(Path(classifier_dir) / CHECKPOINT_FILE).read_bytes(),
                   image_sets=tuple(sorted(image_sets)), batch_size=cfg.evaluate.batch_size)
