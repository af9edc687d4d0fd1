"""The metric set every model is scored with, from precomputed features (real vs generated)."""

from __future__ import annotations

import numpy as np

from components.config import EvaluateConfig
from components.metrics.fid import fid_spread, fid_torchmetrics, kid
from components.metrics.precision_recall import precision_recall


def sample_metrics(real: np.ndarray, fake: np.ndarray, cfg: EvaluateConfig, full: bool = True) -> dict[str, float]:
    """FID (with its spread over subsets), KID, and precision/recall/density/coverage.

    Args:
        real: ``(N, D)`` features of the real test images.
        fake: ``(M, D)`` features of the generated images.
        cfg: subset counts, KID subset size, k for the k-NN manifolds.
        full: ``False`` computes FID and KID only (for reference rows that need no more).

    Returns:
        ``fid``, ``fid_mean``, ``fid_std``, ``kid``, ``kid_std`` (+ ``precision``, ``recall``,
        ``density``, ``coverage`` when ``full``).
    """
    # bootstrap resamples: fid_std estimates the sampling error of the full-size FID
    fid_mean, fid_std = fid_spread(real, fake, subsets=max(cfg.fid_subsets, 2), seed=cfg.seed)
    kid_size = min(cfg.kid_subset_size, len(real), len(fake))
    kid_mean, kid_std = kid(real, fake, subset_size=kid_size, subsets=50, seed=cfg.seed)
    out = {"fid": fid_torchmetrics(real, fake), "fid_mean": fid_mean, "fid_std": fid_std,
           "kid": kid_mean, "kid_std": kid_std}
    if full:
        out.update(precision_recall(real, fake, k=cfg.nearest_k))
    return out
