"""Loop callbacks that need neither Ray nor MLflow: local checkpoints and a progress bar."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from components.models.base import TrainableModel
from components.training.checkpoint import CHECKPOINT_FILE, checkpoint_payload, save_checkpoint
from components.training.loop import Callback, EpochStats


class LocalCheckpoint(Callback):
    """Write ``<folder>/checkpoint.pt`` every ``every`` epochs and after the last one."""

    def __init__(self, folder: str | Path, name: str, every: int, epochs: int):
        self.folder, self.name, self.every, self.epochs = Path(folder), name, every, epochs

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None:
        done = stats.epoch + 1
        if done % self.every == 0 or done == self.epochs:
            save_checkpoint(self.folder / CHECKPOINT_FILE, checkpoint_payload(model, name=self.name, epoch=done))


class ProgressBar(Callback):
    """One tqdm bar over all epochs' steps, refreshed at logging intervals."""

    def __init__(self, total_steps: int, desc: str, disable: bool = False):
        self.bar = tqdm(total=total_steps, desc=desc, unit="step", disable=disable, dynamic_ncols=True)
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
