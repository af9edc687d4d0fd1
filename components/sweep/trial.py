"""One trial of a sweep: the train stage's Ray Train job for the trial's values, then the evaluate
stage's scores on a small N, reported to Tune and recorded in the trial's MLflow run.

``run_trial`` is Tune's trainable (Ray Train V2's pattern: a driver function per trial that
builds and fits a ``TorchTrainer``). It runs in a Tune trial actor that asks for no CPU: the
trial's Train workers hold its resources, so concurrency is ``SweepConfig.max_concurrent`` and
Train's placement groups, not the driver functions. The scoring (sampling, features, metrics)
runs in that actor's process, on its CPU.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import tracking
from components.config import EvaluateConfig, LoadingConfig, RayConfig, SweepConfig, TrainBase, flatten
from components.data.dataset import Split
from components.data.spec import DataSpec
from components.distributed.inference_jobs import chunk_ranges, chunk_seed
from components.distributed.jobs import Tracking, TrainJob
from components.distributed.runner import delete_run, run_job
from components.distributed.train_jobs import train_job
from components.metrics.features import apply_batched
from components.metrics.held_out import held_out_scores
from components.metrics.suite import sample_metrics
from components.models.sampling import draw_balanced
from components.sweep.space import trial_config
from components.training.checkpoint import CHECKPOINT_FILE, model_from_checkpoint

OBJECTIVE = "objective"  # the value Tune compares: the sweep's objective score, under one name
OBJECTIVE_METRIC = "sweep/objective"  # the same in the trial's MLflow run


@dataclass(frozen=True)
class SharedSource:
    """The training split's per-rank Ray Datasets, which the sweep's driver put into the object store
    once: every trial's ``train`` source (every trial has the sweep's ``ray.num_workers`` ranks)."""

    shares: list[Any]  # ray.data.MaterializedDataset per rank

    def rank_datasets(self, world_size: int) -> list[Any]:
        if world_size != len(self.shares):
            raise ValueError(f"the sweep's data is split {len(self.shares)} ways, not {world_size}")
        return self.shares


@dataclass(frozen=True)
class SweepRecords:
    """Where trials record themselves: the store, the sweep's experiment, its parent run, common tags."""

    uri: str
    experiment: str
    parent_run_id: str
    tags: dict[str, str]


@dataclass(frozen=True)
class SweepSetup:
    """What every trial needs, put into Ray's object store once (``tune.with_parameters``).

    Attributes:
        name: the sweep's name (its Tune experiment; a trial's Train run is ``<name>-<trial id>``).
        model: the swept model (a section of ``params.yaml``'s ``train``).
        section: its validated training section, which the trial's values override.
        sweep: the sweep file.
        ray: Ray settings of each trial's job, ``storage_path`` absolute (trials run in their own folder).
        evaluate: the metric settings (as the evaluate stage uses them).
        data, rows, loading: the training split's shape, size and how ranks hold it.
        grid_seed: seed of the sample grids and of the scored samples (``sample.seed``).
        records: where the trial's MLflow run goes.
        train: the training split (``SharedSource``).
        classifier: the classifier stage's checkpoint (bytes): the metrics' feature space.
        reference: ``(N, D)`` classifier features of the first N real test images.
        held_out: the test images the family's held-out scores use.
    """

    name: str
    model: str
    section: TrainBase
    sweep: SweepConfig
    ray: RayConfig
    evaluate: EvaluateConfig
    data: DataSpec
    rows: int
    loading: LoadingConfig
    grid_seed: int
    records: SweepRecords
    train: SharedSource
    classifier: bytes
    reference: np.ndarray
    held_out: Split


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Tune's sampled values as plain Python (numpy scalars become int/float), for YAML and MLflow."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}


def run_trial(values: dict[str, Any], setup: SweepSetup) -> None:
    """Tune's trainable: train ``setup.model`` with ``values`` for ``setup.sweep.steps`` steps, score it, report.

    A trial whose run is already FINISHED (a sweep resumed after its driver died before Tune
    saved that) reports its recorded scores without training again.

    Raises:
        Whatever the job raises (``runner.JobFailed`` once Train's retries are spent, a
        ``ValidationError`` for values the section rejects): the trial's run ends FAILED and Tune
        marks the trial ERROR; the other trials go on.
    """
    import ray.tune

    values = plain(values)
    trial_id = ray.tune.get_context().get_trial_id()
    run, recorded = _trial_run(setup, trial_id, values)
    if recorded is not None:
        ray.tune.report(recorded)
        return
    with run:  # FINISHED with its scores, or FAILED
        config = trial_config(setup.section, values, setup.sweep.steps)
        job = TrainJob(name=f"{setup.model}-{trial_id}", config=config, data=setup.data, rows=setup.rows,
                       loading=setup.loading, tracking=Tracking(setup.records.uri, run.run_id, False),
                       grid_seed=setup.grid_seed, progress=False)
        train_run = f"{setup.name}-{trial_id}"
        try:
            result = run_job(train_job, job, cfg=setup.ray, name=train_run,
                             datasets={"train": setup.train})  # type: ignore[dict-item]  # a Source by its one method
        except Exception:
            # a failed trial stays failed (a resumed sweep does not restart it): nothing to resume from.
            # A killed driver raises nothing here, so an interrupted trial keeps its checkpoints.
            delete_run(setup.ray.storage_path, train_run)
            raise
        try:
            scores = trial_scores(result / CHECKPOINT_FILE, setup)
        finally:
            shutil.rmtree(result, ignore_errors=True)
        scores[OBJECTIVE] = scores[setup.sweep.objective]
        run.log_metrics({**{f"eval/{k}": v for k, v in scores.items() if k != OBJECTIVE},
                         OBJECTIVE_METRIC: scores[OBJECTIVE]}, step=setup.sweep.steps)
    ray.tune.report(scores)


def _trial_run(setup: SweepSetup, trial_id: str, values: dict[str, Any]) -> tuple[tracking.ModelRun, dict | None]:
    """The trial's child run (found again by its trial id after a resume, else new), and its
    recorded scores when it already FINISHED (else None)."""
    records = setup.records
    key = {tracking.PARENT_RUN_TAG: records.parent_run_id, tracking.TRIAL_TAG: trial_id}
    found = tracking.find_run(records.uri, records.experiment, key)
    if found is not None and found.info.status == "FINISHED" and OBJECTIVE_METRIC in found.data.metrics:
        metrics = found.data.metrics
        recorded = {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")}
        return tracking.ModelRun(records.uri, found.info.run_id, records.experiment, end=False), {
            **recorded, OBJECTIVE: metrics[OBJECTIVE_METRIC]}
    params = flatten({"config": {**setup.section.model_dump(mode="json"), **values, "epochs": None,
                                 "steps": setup.sweep.steps}})
    params.update({f"sweep.{k}": v for k, v in values.items()})
    run_id = tracking.start_run(records.uri, records.experiment, f"{setup.model}-{trial_id}",
                                {**records.tags, **key}, params, run_id=found.info.run_id if found else None)
    return tracking.ModelRun(records.uri, run_id, records.experiment), None


@torch.no_grad()
def trial_scores(checkpoint: Path, setup: SweepSetup) -> dict[str, float]:
    """The evaluate stage's scores of a trained checkpoint on ``setup.sweep.num_samples`` images.

    Images are drawn as the sample stage draws them (balanced labels, fixed chunks, seeded by
    chunk), embedded with the classifier, and compared with the first N real test images'
    features: FID, KID, precision, recall, density, coverage, and the family's held-out scores.
    """
    model = model_from_checkpoint(checkpoint)
    model.eval()
    n, batch = setup.sweep.num_samples, setup.evaluate.batch_size
    images = torch.cat([draw_balanced(model, stop - start, chunk_seed(setup.grid_seed, j), start)[0]
                        for j, (start, stop) in enumerate(chunk_ranges(n, batch))])  # (N, C, H, W) uint8
    extractor = model_from_checkpoint(setup.classifier).feature_extractor()
    fake = apply_batched(extractor, images, batch)  # (N, D)
    real = np.array(setup.reference[:n])  # a writable copy: arrays from Ray's object store are read-only
    scores = sample_metrics(real, fake, setup.evaluate)
    held_out = Split(np.array(setup.held_out.images), np.array(setup.held_out.labels))  # writable, as above
    scores.update(held_out_scores(model, held_out, setup.evaluate))
    return scores
