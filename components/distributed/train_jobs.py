"""Worker bodies that train: a generative model (``train_job``), the classifier (``classifier_job``).

Each takes its job spec (``jobs.py``: ``TrainJob``, ``ClassifierJob``) and a ``Session`` (local or
Ray); the data comes from ``session.dataset(name)``: each rank reads its share through Ray Data,
so no worker reads the driver's disk and this works on a multi-node cluster.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.data.loader import StreamLoader, TensorLoader
from components.data.spec import DataSpec
from components.distributed.inference_jobs import embed_sets
from components.distributed.jobs import ClassifierJob, TrainJob
from components.distributed.session import Session
from components.models import build_model
from components.models.base import TrainableModel
from components.training.checkpoint import (
    CHECKPOINT_FILE,
    checkpoint_payload,
    load_checkpoint,
    parameter_digest,
    save_checkpoint,
)
from components.training.loop import Callback, EpochStats, RunLength, configure_runtime, fit, run_length, warn_if_short
from components.training.precision import precision_reason

HISTORY_FILE = "history.json"
FAULT_STEP_ENV = "GENMODELS_FAULT_AT_STEP"  # test-only: raise once at this step
FAULT_MARKER_ENV = "GENMODELS_FAULT_MARKER"  # file created when the fault fired, so it fires once


class ReportCallback(Callback):
    """Checkpoint every ``every`` epochs (and at the end) through the session; rank 0 writes the file.

    ``before_checkpoint`` (rank 0's MLflow flush) runs first: a run resumed from this checkpoint
    never logs the epochs before it again, so what was logged up to it must already be stored.
    """

    def __init__(self, session: Session, name: str, every: int, epochs: int, history: list[dict],
                 before_checkpoint: Callable[[], None] | None = None):
        self.session, self.name, self.every, self.epochs, self.history = session, name, every, epochs, history
        self.before_checkpoint = before_checkpoint

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        done = stats.epoch + 1
        metrics = {"epoch": done, "step": model.step, **{f"train/{k}": v for k, v in stats.losses.items()}}
        if done % self.every and done != self.epochs:
            self.session.report(metrics)
            return
        if self.before_checkpoint is not None:
            self.before_checkpoint()
        with tempfile.TemporaryDirectory() as folder:
            if self.session.rank == 0:
                save_checkpoint(Path(folder) / CHECKPOINT_FILE, checkpoint_payload(model, name=self.name, epoch=done))
                (Path(folder) / HISTORY_FILE).write_text(json.dumps(self.history))
            # every rank adds its weights digest and node: the driver checks DDP kept the ranks equal
            worker = {"rank": self.session.rank, "node": self.session.node, "weights": parameter_digest(model),
                      "step": model.step, "precision": model.precision}
            (Path(folder) / f"worker-{self.session.rank:03d}.json").write_text(json.dumps(worker))
            self.session.report(metrics, Path(folder))


class HistoryCallback(Callback):
    """Keeps the logged losses (for loss curves) and epoch stats in a list of dicts."""

    def __init__(self, history: list[dict], world_size: int):
        self.history, self.world_size = history, world_size

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        self.history.append({"step": step, **losses})

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        self.history.append({"step": model.step, "epoch": stats.epoch + 1, "epoch_seconds": stats.seconds,
                             "epoch_cpu_seconds": stats.cpu_seconds, "images_per_s": stats.images_per_s * self.world_size})


class FaultInjection(Callback):
    """Test-only: raise once at step ``step`` or after, leaving ``marker`` so it fires only once.

    Installed only when ``GENMODELS_FAULT_AT_STEP`` and ``GENMODELS_FAULT_MARKER`` are set (``from_env``).
    """

    def __init__(self, step: int, marker: Path):
        self.step, self.marker = step, marker

    @classmethod
    def from_env(cls) -> FaultInjection | None:
        """The fault the environment asks for, or None (the normal case)."""
        step, marker = int(os.environ.get(FAULT_STEP_ENV) or 0), os.environ.get(FAULT_MARKER_ENV)
        return cls(step, Path(marker)) if step and marker else None

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        if step >= self.step and not self.marker.exists():
            self.marker.write_text(str(step))
            raise RuntimeError(f"injected fault at step {step}")


def train_job(job: TrainJob, session: Session) -> None:
    """Train one model: resume from the session's latest checkpoint, wrap for DDP, run ``fit``.

    What it leaves is in the checkpoints it reports: ``checkpoint.pt``, ``history.json`` (every
    logged loss and epoch, the resumed ones included) and one ``worker-<rank>.json`` per rank.
    """
    _train(job, session)


def _train(job: TrainJob, session: Session) -> tuple[TrainableModel, RunLength]:
    cfg = job.config
    model = build_model(cfg, job.data, session.device)
    start_epoch = 0
    history: list[dict] = []
    with session.latest_checkpoint() as folder:
        if folder is not None:
            payload = load_checkpoint(folder / CHECKPOINT_FILE, session.device)
            model.load_state_dict(payload["state"])
            start_epoch = payload["epoch"]
            if (folder / HISTORY_FILE).exists():
                history = json.loads((folder / HISTORY_FILE).read_text())
            if session.rank == 0:
                print(f"{job.name}: resumed from epoch {start_epoch} (step {model.step})", flush=True)
    configure_runtime(model, cfg.precision, cfg.channels_last, cfg.compile)
    model.wrap_networks(session.prepare)
    loader = _loader(job, session, model.spec, cfg.batch_size, cfg.seed)
    length = run_length(cfg.epochs, cfg.steps, len(loader))  # per rank, so every rank stops at the same step
    if session.rank == 0:
        print(f"{job.name}: {length.steps} steps per worker ({length.epochs} epochs of {len(loader)}), "
              f"precision {model.precision} ({precision_reason(cfg.precision, model.precision, session.device)})", flush=True)
        warn_if_short(model, length)
    callbacks: list[Callback] = [HistoryCallback(history, session.world_size)]
    if (fault := FaultInjection.from_env()) is not None:
        callbacks.append(fault)
    logger = monitor = None
    if session.rank == 0 and job.tracking is not None:
        from components.tracking import start_tracking
        from components.training.callbacks import TrackingCallback

        logger, monitor = start_tracking(job.tracking.uri, job.tracking.run_id, job.tracking.system_metrics)
        callbacks.append(TrackingCallback(logger, session.world_size, cfg.image_every, length.epochs, job.grid_seed))
    if session.rank == 0 and job.progress:
        from components.training.callbacks import ProgressBar

        callbacks.append(ProgressBar(length.steps, desc=f"train {job.name}"))
    callbacks.append(ReportCallback(session, job.name, cfg.checkpoint_every, length.epochs, history,
                                    before_checkpoint=logger.flush if logger is not None else None))
    try:
        fit(model, loader, epochs=length.epochs, seed=cfg.seed, start_epoch=start_epoch, rank=session.rank,
            log_every=cfg.log_every, channels_last=cfg.channels_last, max_steps=cfg.steps, callbacks=callbacks)
        return model, length
    finally:
        if monitor is not None:
            monitor.finish()
        if logger is not None:
            errors = logger.close()
            if errors:
                print(f"warning: {len(errors)} MLflow writes failed: {errors[:3]}")


def _loader(job: TrainJob, session: Session, spec: DataSpec, batch_size: int,
            seed: int) -> TensorLoader | StreamLoader:
    """This rank's share of the ``train`` source: once into device memory, or streamed every epoch.

    Each rank trains on its own fixed share, reshuffled every epoch from ``(seed + rank, epoch)``.
    """
    data, shape = session.dataset("train"), (spec.channels, spec.height, spec.width)
    loading = job.loading
    if loading.mode == "memory":
        rows = data.arrays()
        return TensorLoader(rows["image"].reshape(-1, *shape), rows["label"], batch_size, session.device,
                            shuffle=True, seed=seed + session.rank)

    def batches(epoch: int):
        return data.batches(batch_size, prefetch=loading.prefetch_batches, shuffle_buffer=loading.shuffle_buffer,
                            seed=(seed + session.rank) * 7919 + epoch)

    return StreamLoader(batches, job.rows // session.world_size, shape, batch_size, session.device)


def classifier_job(job: ClassifierJob, session: Session) -> None:
    """Train the classifier, then embed the sources named in ``job.image_sets``: one Ray job, one start-up.

    The results hold ``checkpoint.pt`` and one folder of feature chunks per set, as
    ``train_job`` and ``features_job`` would have written them. Every rank embeds with rank 0's
    state, the one saved: under DDP each rank's BatchNorm running statistics come from its own shard.
    """
    model, length = _train(job.train, session)
    for network in model.networks().values():
        session.broadcast(network)
    with tempfile.TemporaryDirectory() as folder:
        if session.rank == 0:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE,
                            checkpoint_payload(model, name=job.train.name, epoch=length.epochs))
        embed_sets(model, job.image_sets, job.batch_size, session, Path(folder))
        session.send_results(Path(folder))


def worker_records(folder: str | Path) -> list[dict[str, Any]]:
    """The per-rank records of a training checkpoint; raises if the ranks' weights differ."""
    records = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("worker-*.json"))]
    if len({r["weights"] for r in records}) > 1:
        raise RuntimeError(f"DDP ranks disagree on the final weights: {records}")
    return records
