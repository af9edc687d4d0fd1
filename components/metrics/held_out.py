"""What the metrics take from the real data besides features: the reference image sets the
classifier embeds, and a family's own scores on real held-out images."""

from __future__ import annotations

import numpy as np
import torch

from components.config import EvaluateConfig
from components.data.dataset import Split
from components.models.base import GenerativeModel


def reference_sets(train: Split, test: Split, n: int, seed: int) -> dict[str, np.ndarray]:
    """The real image sets every model is compared with: the first ``n`` test images, and a
    same-size uniform draw (without replacement, in split order) from the training split.

    Args:
        train, test: the data splits.
        n: how many images (at most the test split's size).
        seed: the draw's seed (``evaluate.seed``).

    Returns:
        ``{"test": (m, C, H, W) uint8, "train": (m', C, H, W) uint8}``.
    """
    rng = np.random.default_rng(seed)
    test_n = min(n, len(test.images))
    train_idx = np.sort(rng.choice(len(train.images), size=min(test_n, len(train.images)), replace=False))
    return {"test": test.images[:test_n], "train": train.images[train_idx]}


def held_out_scores(model: GenerativeModel, test: Split, cfg: EvaluateConfig) -> dict[str, float]:
    """The family's own scores (``held_out_metrics``: VAE ELBO, DDPM noise loss; none for GANs),
    averaged over batches of the first ``cfg.held_out_images`` test images.

    Args:
        model: the trained model (put in eval mode here).
        test: the test split.
        cfg: ``held_out_images``, ``held_out_batch_size`` and ``seed`` (the noise the scores draw).

    Returns:
        Named per-batch means; empty for a family without held-out scores.
    """
    images = torch.as_tensor(test.images[: cfg.held_out_images]).float().div(127.5).sub(1.0)  # (N, C, H, W)
    labels = torch.as_tensor(test.labels[: cfg.held_out_images])
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    size = cfg.held_out_batch_size
    sums: dict[str, float] = {}
    batches = 0
    with torch.no_grad():
        for start in range(0, len(images), size):
            for k, v in model.held_out_metrics(images[start : start + size], labels[start : start + size], gen).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            batches += 1
    return {k: v / batches for k, v in sums.items()}
