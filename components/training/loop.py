"""``fit``: run any model for some epochs (or optimiser steps) over a TensorLoader. Plain PyTorch.

Ray and MLflow plug in through callbacks; the loop itself knows neither. Host-device
synchronisation happens only every ``log_every`` steps and at epoch ends, which is also
where the NaN/inf guard looks: a non-finite loss stops training *before* the epoch's
checkpoint callback runs, so the last good checkpoint is kept.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from components.data.loader import TensorLoader
from components.models.base import TrainableModel
from components.training.precision import resolve_precision


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf."""


@dataclass
class EpochStats:
    """What one epoch did. ``losses`` are means over the epoch's steps."""

    epoch: int  # 0-based index of the epoch just finished
    steps: int
    images: int
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    # CPU time of the training thread (time.thread_time) over the epoch: with one torch thread,
    # ``cpu_seconds / seconds`` is the share of the epoch it computed rather than waited (for a
    # core, a peer rank's all-reduce, a batch)
    cpu_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class RunLength:
    """How long a run trains: ``epochs`` passes over the data, the last one partial when ``steps``
    (optimiser steps per rank, in all) is not a whole number of epochs."""

    epochs: int
    steps: int


def run_length(epochs: int | None, steps: int | None, steps_per_epoch: int) -> RunLength:
    """The run's length from the config's ``epochs`` or ``steps`` (exactly one is set) and the loader's length."""
    if steps is not None:
        return RunLength(epochs=math.ceil(steps / steps_per_epoch), steps=steps)
    if epochs is None:
        raise ValueError("give epochs or steps")
    return RunLength(epochs=epochs, steps=epochs * steps_per_epoch)


class ShortRunWarning(UserWarning):
    """A run with fewer optimiser steps than its family needs to learn anything."""


def warn_if_short(model: TrainableModel, length: RunLength) -> None:
    """Warn (once, at the start) when ``length`` is below the family's ``min_useful_steps``."""
    least = model.min_useful_steps
    if least is not None and length.steps < least:
        warnings.warn(ShortRunWarning(
            f"{model.family}: {length.steps} optimiser steps per worker ({length.epochs} epochs), fewer than the "
            f"~{least} a {model.family} needs to learn anything: expect an untrained model. Train by steps "
            f"(steps: {least} or more, epochs: null) or for more epochs."), stacklevel=2)


class Callback(Protocol):
    """Hooks into ``fit``: subclass and override what you need (``callbacks.ProgressBar``,
    ``callbacks.TrackingCallback``), or offer all four."""

    def on_train_start(self, model: TrainableModel, start_epoch: int) -> None: ...

    def on_log(self, model: TrainableModel, step: int, losses: dict[str, float]) -> None:
        """Every ``log_every`` steps, with the window's mean losses as floats."""

    def on_epoch_end(self, model: TrainableModel, stats: EpochStats) -> None: ...

    def on_train_end(self, model: TrainableModel) -> None: ...


def configure_runtime(model: TrainableModel, precision: str = "fp32", channels_last: bool = False,
                      compile_mode: str = "off") -> None:
    """Apply the fast-path options to a model before training.

    Args:
        precision: ``auto``, ``fp32`` or ``bf16``, resolved on the model's device
            (``precision.resolve_precision``: raises for bf16 where the device lacks it); bf16
            enables autocast in the model's forward passes. ``model.precision`` says which ran.
        channels_last: NHWC memory format for the conv networks.
        compile_mode: ``off``, ``default`` or ``reduce-overhead`` (CUDA graphs); compile
            errors fall back to eager (dynamo's ``suppress_errors``).
    """
    if resolve_precision(precision, model.device) == "bf16":
        model.autocast_dtype = torch.bfloat16
    if channels_last:
        for net in model.networks().values():
            net.to(memory_format=torch.channels_last)
    if compile_mode != "off":
        use_project_compile_cache()
        from torch import _dynamo

        _dynamo.config.suppress_errors = True
        mode = None if compile_mode == "default" else compile_mode
        model.wrap_networks(lambda net: torch.compile(net, mode=mode))


def use_project_compile_cache() -> None:
    """Point inductor's on-disk cache at ``<project>/.cache/torchinductor`` unless the user chose one.

    A Ray worker gets the driver's project path (``runner.worker_env``). Inductor writes its own
    default (``/tmp/torchinductor_<user>``) into the environment once anything imported it, so
    that default counts as unset.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from components import layout

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(layout.compile_cache_dir())


def _check_finite(values: dict[str, float], step: int) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(f"non-finite loss at step {step}: {bad}; lower the lr or enable grad_clip "
                                 "(the last good checkpoint is kept)")


def _same_keys(keys: list[str], losses: dict[str, Tensor]) -> list[str]:
    """The loss names, checked at each window start: the stacked sums rely on a fixed set and order."""
    names = list(losses)
    if keys and names != keys:
        raise ValueError(f"train_step returned losses {names} after {keys}: the set of losses must not change")
    return names


def fit(
    model: TrainableModel,
    loader: TensorLoader,
    *,
    epochs: int,
    seed: int,
    start_epoch: int = 0,
    rank: int = 0,
    log_every: int = 50,
    channels_last: bool = False,
    max_steps: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> list[EpochStats]:
    """Train ``model`` from ``start_epoch`` up to ``epochs``, or until ``model.step`` reaches ``max_steps``.

    Each epoch reshuffles the loader by epoch and re-seeds the model's RNG from
    ``(seed, rank, epoch)``, so resuming at an epoch boundary reproduces an uninterrupted run.
    ``max_steps`` counts the model's own (checkpointed) steps, so a resumed run stops at the same
    total, and every DDP rank (same loader length) at the same step: none waits at an all-reduce.

    Returns:
        One EpochStats per epoch run.
    """
    for cb in callbacks:
        cb.on_train_start(model, start_epoch)
    history = []
    for epoch in range(start_epoch, epochs):
        if max_steps is not None and model.step >= max_steps:
            break
        loader.set_epoch(epoch)
        model.reseed(seed, rank, epoch)
        model.train()
        # Loss sums stay on the device as one (K,) tensor per window: two small ops a step
        # whatever K is, and one host transfer per log (not one per loss).
        keys: list[str] = []
        window: Tensor | None = None  # sums since the last log
        epoch_sum: Tensor | None = None  # sums of the epoch's finished windows
        window_steps, steps = 0, 0
        start, cpu_start = time.perf_counter(), time.thread_time()
        for images, labels in loader:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            losses = model.train_step(images, labels)
            values = torch.stack([v.detach().float() for v in losses.values()])  # (K,), no sync
            if window is None:
                window, keys = values, _same_keys(keys, losses)
            else:
                window.add_(values)
            steps += 1
            window_steps += 1
            if model.step % log_every == 0:
                means = dict(zip(keys, (window / window_steps).tolist(), strict=True))
                _check_finite(means, model.step)
                for cb in callbacks:
                    cb.on_log(model, model.step, means)
                epoch_sum = window if epoch_sum is None else epoch_sum.add_(window)
                window, window_steps = None, 0
            if max_steps is not None and model.step >= max_steps:
                break  # the last epoch, partial
        if window is not None:
            epoch_sum = window if epoch_sum is None else epoch_sum.add_(window)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu_start
        means = {} if epoch_sum is None else dict(zip(keys, (epoch_sum / max(steps, 1)).tolist(), strict=True))
        _check_finite(means, model.step)
        stats = EpochStats(epoch=epoch, steps=steps, images=steps * loader.batch_size, seconds=seconds, losses=means,
                           cpu_seconds=cpu_seconds)
        history.append(stats)
        for cb in callbacks:
            cb.on_epoch_end(model, stats)
    for cb in callbacks:
        cb.on_train_end(model)
    return history
