"""Worker bodies of the compute stages: train, sample, extract features.

Each takes a plain ``job`` dict (everything a worker needs, arrays included, so no worker
reads the driver's disk: this works on a multi-node cluster) and a session (local or Ray).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.config import model_config_from_dict
from components.data.loader import TensorLoader
from components.models import build_model
from components.models.base import DataSpec, GenerativeModel, TrainableModel
from components.training.checkpoint import (
    CHECKPOINT_FILE,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
    weights_digest,
)
from components.training.loop import Callback, EpochStats, configure_runtime, fit

HISTORY_FILE = "history.json"
FAULT_STEP_ENV = "GENMODELS_FAULT_AT_STEP"  # test-only: raise once at this step
FAULT_MARKER_ENV = "GENMODELS_FAULT_MARKER"  # file created when the fault fired, so it fires once


# --------------------------------------------------------------------------- training
class ReportCallback(Callback):
    """Checkpoint every ``every`` epochs (and at the end) through the session; rank 0 writes the file."""

    def __init__(self, session: Any, name: str, every: int, epochs: int, history: list[dict]):
        self.session, self.name, self.every, self.epochs, self.history = session, name, every, epochs, history

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        done = stats.epoch + 1
        metrics = {"epoch": done, "step": model.step, **{f"train/{k}": v for k, v in stats.losses.items()}}
        if done % self.every and done != self.epochs:
            self.session.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            if self.session.rank == 0:
                save_checkpoint(Path(folder) / CHECKPOINT_FILE, checkpoint_payload(model, name=self.name, epoch=done))
                (Path(folder) / HISTORY_FILE).write_text(json.dumps(self.history))
            # every rank adds its weights digest and node: the driver checks DDP kept the ranks equal
            worker = {"rank": self.session.rank, "node": self.session.node, "weights": weights_digest(model),
                      "step": model.step}
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
                             "images_per_s": stats.images_per_s * self.world_size})


class FaultInjection(Callback):
    """Test-only: raise at a given step once (``GENMODELS_FAULT_AT_STEP`` + ``GENMODELS_FAULT_MARKER``)."""

    def __init__(self) -> None:
        self.step = int(os.environ.get(FAULT_STEP_ENV, "0"))
        self.marker = os.environ.get(FAULT_MARKER_ENV)

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        if self.step and self.marker and step >= self.step and not Path(self.marker).exists():
            Path(self.marker).write_text(str(step))
            raise RuntimeError(f"injected fault at step {step}")


def sample_grid(model: GenerativeModel, n: int, seed: int) -> np.ndarray:
    """A ``rows x rows`` uint8 image grid from fixed noise (same seed each time, so grids show progress)."""
    rows = int(np.sqrt(n))
    n = rows * rows
    labels = torch.arange(n, device=model.device) % model.spec.num_classes if model.is_conditional else None
    gen = torch.Generator(device=model.device).manual_seed(seed)
    images = model.sample(n, labels=labels, generator=gen).cpu().numpy()  # (n, C, H, W)
    return make_grid(images, rows)


def make_grid(images: np.ndarray, rows: int, pad: int = 2) -> np.ndarray:
    """Tile ``(n, C, H, W)`` uint8 images into one ``(rows*(H+pad), cols*(W+pad))`` (or RGB) image."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            img.transpose(1, 2, 0)
        )
    return grid[..., 0] if c == 1 else grid


class MlflowCallback(Callback):
    """Rank 0 only: losses every log step, epoch speed, and a sample grid every ``image_every`` epochs."""

    def __init__(self, logger: Any, world_size: int, image_every: int, epochs: int, grid_seed: int):
        self.logger, self.world_size = logger, world_size
        self.image_every, self.epochs, self.grid_seed = image_every, epochs, grid_seed

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        self.logger.log_metrics({f"train/{k}": v for k, v in losses.items()}, step)

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        done = stats.epoch + 1
        self.logger.log_metrics({"train/epoch": done, "train/epoch_seconds": stats.seconds,
                                 "train/images_per_s": stats.images_per_s * self.world_size,
                                 **{f"train/epoch_{k}": v for k, v in stats.losses.items()}}, model.step)
        if isinstance(model, GenerativeModel) and (done % self.image_every == 0 or done == self.epochs):
            self.logger.log_image(sample_grid(model, 64, self.grid_seed), key="samples", step=done)


def _start_tracking(job: dict[str, Any]) -> tuple[Any, Any]:
    """Rank 0: the batched run logger and (optionally) MLflow's system-metrics monitor."""
    from components.tracking import RunLogger

    tracking = job["tracking"]
    logger = RunLogger(tracking["uri"], tracking["run_id"])
    monitor = None
    if tracking.get("system_metrics"):
        os.environ["MLFLOW_TRACKING_URI"] = tracking["uri"]
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(tracking["run_id"], resume_logging=True)
        monitor.start()
    return logger, monitor


def train_job(job: dict[str, Any], session: Any) -> list[EpochStats]:
    """Train one model: resume from the session's latest checkpoint, wrap for DDP, run ``fit``."""
    return _train(job, session)[1]


def _train(job: dict[str, Any], session: Any) -> tuple[TrainableModel, list[EpochStats]]:
    cfg = model_config_from_dict(job["config"])
    model = build_model(cfg, DataSpec(**job["spec"]), session.device)
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
                print(f"{job['name']}: resumed from epoch {start_epoch} (step {model.step})", flush=True)
    configure_runtime(model, cfg.precision, cfg.channels_last, cfg.compile)
    model.wrap_networks(session.prepare)
    loader = TensorLoader(job["images"], job["labels"], cfg.batch_size, session.device, shuffle=True,
                          seed=cfg.seed, rank=session.rank, world_size=session.world_size)
    callbacks: list[Callback] = [HistoryCallback(history, session.world_size), FaultInjection()]
    logger = monitor = None
    if session.rank == 0 and job.get("tracking"):
        logger, monitor = _start_tracking(job)
        callbacks.append(MlflowCallback(logger, session.world_size, cfg.image_every, cfg.epochs, job.get("grid_seed", 0)))
    if session.rank == 0 and job.get("progress", True):
        from components.training.callbacks import ProgressBar

        callbacks.append(ProgressBar(cfg.epochs * len(loader), desc=f"train {job['name']}"))
    callbacks.append(ReportCallback(session, job["name"], cfg.checkpoint_every, cfg.epochs, history))
    try:
        stats = fit(model, loader, epochs=cfg.epochs, seed=cfg.seed, start_epoch=start_epoch, rank=session.rank,
                    log_every=cfg.log_every, channels_last=cfg.channels_last, callbacks=callbacks)
        return model, stats
    finally:
        if monitor is not None:
            monitor.finish()
        if logger is not None:
            errors = logger.close()
            if errors:
                print(f"warning: {len(errors)} MLflow writes failed: {errors[:3]}")


# --------------------------------------------------------------------------- chunked work
def worker_records(folder: str | Path) -> list[dict[str, Any]]:
    """The per-rank records of a training checkpoint; raises if the ranks' weights differ."""
    records = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("worker-*.json"))]
    if len({r["weights"] for r in records}) > 1:
        raise RuntimeError(f"DDP ranks disagree on the final weights: {records}")
    return records


def chunk_ranges(total: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(total)`` in fixed-size chunks."""
    return [(s, min(s + chunk, total)) for s in range(0, total, chunk)]


def chunk_seed(seed: int, index: int) -> int:
    """Seed of chunk ``index``: depends on the chunk, never on the worker, so output ignores worker count."""
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


def _save_array_chunk(folder: Path, index: int, **arrays: np.ndarray) -> None:
    np.savez(folder / f"chunk_{index:06d}.npz", **arrays)


def merge_chunks(folder: str | Path) -> dict[str, np.ndarray]:
    """Concatenate every ``chunk_*.npz`` in ``folder`` in chunk order."""
    files = sorted(Path(folder).glob("chunk_*.npz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no chunks")
    parts: dict[str, list[np.ndarray]] = {}
    for f in files:
        with np.load(f) as npz:
            for key in npz.files:
                parts.setdefault(key, []).append(npz[key])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _model_from_bytes(blob: bytes, device: torch.device) -> TrainableModel:
    from components.training.checkpoint import model_from_checkpoint

    payload = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    return model_from_checkpoint(payload, device)


def sample_job(job: dict[str, Any], session: Any) -> None:
    """Generate named image sets (``job["sets"]``: name -> checkpoint bytes and count) in fixed chunks.

    Chunk ``j`` of a set goes to worker ``j % world_size`` and draws from ``chunk_seed(seed, j)``,
    so the output does not depend on the worker count. Labels are spread evenly over the
    classes (``i % K``): conditional models are asked for each class equally.
    """
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory() as folder:
        for set_index, (set_name, spec) in enumerate(sorted(job["sets"].items())):
            model = _model_from_bytes(spec["checkpoint"], session.device)
            assert isinstance(model, GenerativeModel)
            model.eval()
            out = Path(folder) / set_name
            out.mkdir()
            chunks = chunk_ranges(spec["num_samples"], job["batch_size"])
            mine = [(j, r) for j, r in enumerate(chunks) if j % session.world_size == session.rank]
            for j, (start, stop) in tqdm(mine, desc=f"sample {job['name']}/{set_name}", disable=session.rank != 0):
                labels = torch.arange(start, stop, device=session.device) % model.spec.num_classes
                gen = torch.Generator(device=session.device).manual_seed(chunk_seed(job["seed"] + set_index, j))
                images = model.sample(stop - start, labels=labels if model.is_conditional else None, generator=gen)
                _save_array_chunk(out, j, images=images.cpu().numpy(), labels=labels.cpu().numpy())
        session.report({"sets": len(job["sets"])}, Path(folder))


def features_job(job: dict[str, Any], session: Any) -> None:
    """Embed named uint8 image sets with the evaluator; chunk ``j`` of every set goes to worker ``j % W``.

    Also stores the classifier's predicted label per image (for conditional accuracy).
    """
    model = _model_from_bytes(job["checkpoint"], session.device)
    with tempfile.TemporaryDirectory() as folder:
        _embed_sets(model, job["image_sets"], job["batch_size"], session, Path(folder))
        session.report({"sets": len(job["image_sets"])}, Path(folder))


def evaluator_job(job: dict[str, Any], session: Any) -> None:
    """Train the evaluator, then embed ``job["image_sets"]`` with it: one Ray job, one start-up.

    The final checkpoint holds ``checkpoint.pt`` and one folder of feature chunks per set, as
    ``train_job`` and ``features_job`` would have written them. Every rank embeds with rank 0's
    state, the one saved: under DDP each rank's BatchNorm running statistics come from its own shard.
    """
    model, _ = _train(job, session)
    for network in model.networks().values():
        session.broadcast(network)
    epochs = model_config_from_dict(job["config"]).epochs
    with tempfile.TemporaryDirectory() as folder:
        if session.rank == 0:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE, checkpoint_payload(model, name=job["name"], epoch=epochs))
        _embed_sets(model, job["image_sets"], job["batch_size"], session, Path(folder))
        session.report({"sets": len(job["image_sets"])}, Path(folder))


def _embed_sets(model: TrainableModel, image_sets: dict[str, np.ndarray], batch_size: int, session: Any,
                folder: Path) -> None:
    from tqdm.auto import tqdm

    model.eval()
    for set_name, images in sorted(image_sets.items()):
        chunks = chunk_ranges(len(images), batch_size)
        mine = [(j, r) for j, r in enumerate(chunks) if j % session.world_size == session.rank]
        out = folder / set_name
        out.mkdir()
        for j, (start, stop) in tqdm(mine, desc=f"features {set_name}", disable=session.rank != 0):
            batch = torch.as_tensor(images[start:stop], device=session.device).float().div(127.5).sub(1.0)
            features, predicted = model.embed_and_predict(batch)
            _save_array_chunk(out, j, features=features.double().cpu().numpy(), predicted=predicted.cpu().numpy())
