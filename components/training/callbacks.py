"""Loop callbacks that need neither Ray nor MLflow: a progress bar."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from components.models.base import TrainableModel
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
