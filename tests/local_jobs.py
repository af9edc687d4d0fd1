"""A tiny VAE train job and a ``LocalSession`` over random images: the train job run in-process,
without Ray (test_training.py, test_precision.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.config import LoadingConfig, VAEConfig
from components.data.spec import DataSpec
from components.distributed.datasets import ArraySource
from components.distributed.jobs import Tracking, TrainJob
from components.distributed.session import LocalSession

ROWS = 192  # the session's training rows: 3 steps an epoch at the job's batch of 64


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 ``(n, 1, 28, 28)`` noise images and int ``(n,)`` labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n)


def vae_job(tracking: Tracking | None = None, **fields) -> TrainJob:
    """A train job of a tiny VAE over the session's ``ROWS`` rows; ``fields`` override its config (2 epochs)."""
    config = VAEConfig(**{"epochs": 2, "batch_size": 64, "hidden_dim": 8, "latent_dim": 4, "log_every": 1, **fields})
    return TrainJob(name="vae", config=config, data=DataSpec(), rows=ROWS, loading=LoadingConfig(mode="memory"),
                    tracking=tracking, grid_seed=0, progress=False)


def local_session(folder: str | Path) -> LocalSession:
    """One process on the CPU, checkpoints under ``folder``, ``ROWS`` random images to train on."""
    images, labels = random_images(ROWS)
    return LocalSession(folder, device="cpu", datasets={"train": ArraySource(images, labels)})
