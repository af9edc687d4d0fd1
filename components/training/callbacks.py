"""Loop callbacks that need neither Ray nor MLflow: a progress bar, and the tracking callback that
hands losses, speed and sample grids to a run logger (``components.tracking.RunLogger`` on rank 0)."""

from __future__ import annotations

import sys
from typing import Any, Protocol

from tqdm.auto import tqdm

from components.models.base import GenerativeModel, TrainableModel
from components.training.loop import Callback, EpochStats


class ProgressBar(Callback):
    """One tqdm bar over all epochs' steps, refreshed at logging intervals."""

    def __init__(self, total_steps: int, desc: str, disable: bool = False):
        # On a terminal tqdm redraws in place; into a file or pipe (a Ray worker's stderr, streamed to
        # the driver line by line) every redraw becomes a line: one every 10 s there.
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, desc=desc, unit="step", disable=disable, dynamic_ncols=True,
                        mininterval=0.1 if interactive else 10.0)
        self.last = 0

    def on_train_start(self, model: TrainableModel, start_epoch: int) -> None:
        self.bar.update(model.step - self.last)
        self.last = model.step

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        self.bar.update(step - self.last)
        self.last = step
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        self.bar.update(model.step - self.last)
        self.last = model.step
        self.bar.set_postfix(epoch=stats.epoch + 1, img_s=f"{stats.images_per_s:.0f}", refresh=True)

    def on_train_end(self, model: TrainableModel) -> None:
        self.bar.close()


class RunLog(Protocol):
    """Where ``TrackingCallback`` writes: ``components.tracking.RunLogger`` (batched, retried, rank 0)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_image(self, image: Any, key: str, step: int) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...


class TrackingCallback(Callback):
    """Rank 0 only: losses every log step, epoch speed, and a sample grid every ``image_every`` epochs.

    Args:
        log: the run's logger.
        world_size: workers (the logged images/s is the job's, not this rank's).
        image_every: epochs between sample grids (and one after the last epoch).
        epochs: the run's length.
        grid_seed: the grids' fixed noise (the same images over training show progress).
    """

    def __init__(self, log: RunLog, world_size: int, image_every: int, epochs: int, grid_seed: int):
        self.log, self.world_size = log, world_size
        self.image_every, self.epochs, self.grid_seed = image_every, epochs, grid_seed

    def on_train_start(self, model: TrainableModel, start_epoch: int) -> None:
        del start_epoch
        # what the worker resolved: the driver logged config.precision (maybe ``auto``) before it ran
        self.log.log_params({"runtime.precision": model.precision})

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        self.log.log_metrics({f"train/{k}": v for k, v in losses.items()}, step)

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        done = stats.epoch + 1
        self.log.log_metrics({"train/epoch": done, "train/epoch_seconds": stats.seconds,
                              "train/epoch_cpu_seconds": stats.cpu_seconds,
                              "train/images_per_s": stats.images_per_s * self.world_size,
                              **{f"train/epoch_{k}": v for k, v in stats.losses.items()}}, model.step)
        if isinstance(model, GenerativeModel) and (done % self.image_every == 0 or done == self.epochs):
            from components.report.grid import sample_grid

            self.log.log_image(sample_grid(model, 64, self.grid_seed), key="samples", step=done)

    def on_train_end(self, model: TrainableModel) -> None:
        del model
