"""Fréchet distance (FID) and kernel distance (KID) between two feature sets.

The features come from the in-domain classifier (``components.models.classifier``), not
Inception-v3, so the numbers are comparable with each other (same extractor checksum) but
not with published Inception FIDs.

Two FID implementations agree to about 1e-6 relative on the same features:
``frechet_distance`` (float64 numpy/scipy, the reference formula of Heusel et al. 2017 as in
pytorch-fid) and ``fid_torchmetrics`` (torchmetrics' ``FrechetInceptionDistance`` fed
precomputed features through ``PrecomputedFeatures``). The pipeline reports the latter.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

ArrayLike = np.ndarray | Tensor


class PrecomputedFeatures(nn.Module):
    """Identity "feature extractor": lets torchmetrics' FID/KID consume features computed once.

    ``metric.update(features, real=...)`` then takes ``(B, num_features)`` float arrays instead
    of images; ``num_features`` stops torchmetrics from probing the module with a dummy image.

    Args:
        num_features: feature dimension ``D``.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        """``(B, D)`` -> the same values as float64 (torchmetrics accumulates in float64 anyway)."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features (B, {self.num_features}), got {tuple(features.shape)}")
        return features.double()


def _as_float64(features: ArrayLike) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected at least two feature rows (N, D), got shape {features.shape}")
    return features


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64."""
    features = _as_float64(features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm_or_none(matrix: np.ndarray) -> np.ndarray | None:
    """``scipy.linalg.sqrtm``, or None where scipy warns that the matrix is singular."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            return linalg.sqrtm(matrix)
        except linalg.LinAlgWarning:
            return None


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``
    (Dowson & Landau 1982; FID: Heusel et al. 2017, https://arxiv.org/abs/1706.08500).
    Like pytorch-fid: when the matrix square root is not finite or scipy flags the product as
    singular (dead ReLU units give zero-variance features), add ``eps`` to both diagonals and
    retry; drop a negligible imaginary part left by rounding.

    Args:
        mu1, mu2: ``(D,)`` means.
        sigma1, sigma2: ``(D, D)`` covariances.
        eps: diagonal offset for the near-singular retry.

    Returns:
        The distance (non-negative up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm_or_none(sigma1 @ sigma2)
    if covmean is None or not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part: {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_numpy(real: ArrayLike, fake: ArrayLike) -> float:
    """FID of two ``(N, D)`` feature sets with ``frechet_distance`` (float64 scipy)."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _torch_features(features: ArrayLike) -> Tensor:
    return torch.as_tensor(_as_float64(features))


def fid_torchmetrics(real: ArrayLike, fake: ArrayLike) -> float:
    """FID of two ``(N, D)`` feature sets through torchmetrics' ``FrechetInceptionDistance``.

    Args:
        real: ``(N_r, D)`` features of real images.
        fake: ``(N_f, D)`` features of generated images.

    Returns:
        The FID, computed in float64.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real_t, fake_t = _torch_features(real), _torch_features(fake)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real_t.shape[1]))
    metric.update(real_t, real=True)
    metric.update(fake_t, real=False)
    return float(metric.compute())


def kid(
    real: ArrayLike, fake: ArrayLike, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018, https://arxiv.org/abs/1801.01401).

    Unbiased MMD² with the cubic polynomial kernel ``(x.y / D + 1)^3``, averaged over random
    subsets, via torchmetrics' ``KernelInceptionDistance``. Its subsets are drawn from the
    global torch RNG: it is seeded with ``seed`` inside ``fork_rng`` so the result is
    reproducible and the caller's RNG is left as it was.

    Args:
        real: ``(N_r, D)`` features; ``N_r >= subset_size``.
        fake: ``(N_f, D)`` features; ``N_f >= subset_size``.
        subset_size: samples per subset.
        subsets: number of subsets.
        seed: subset-drawing seed.

    Returns:
        ``(mean, std)`` of KID over the subsets (std with ``ddof=0``, as torchmetrics).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real_t, fake_t = _torch_features(real), _torch_features(fake)
    if subset_size > min(len(real_t), len(fake_t)):
        raise ValueError(f"subset_size {subset_size} exceeds the smaller set ({min(len(real_t), len(fake_t))})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real_t.shape[1]), subsets=subsets, subset_size=subset_size
        )
    metric.update(real_t, real=True)
    metric.update(fake_t, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid_spread(
    real: ArrayLike, fake: ArrayLike, subsets: int = 5, seed: int = 0, subset_size: int | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of FID over repeated random resamples of both sets.

    With ``subset_size=None`` each repeat is a bootstrap resample (with replacement, full
    size), so the std estimates the sampling error of the full-size FID. With an integer,
    each repeat draws ``subset_size`` rows of each set without replacement; FID is biased
    upwards at small N, so compare such numbers only at equal ``subset_size``.

    Args:
        real: ``(N_r, D)`` features.
        fake: ``(N_f, D)`` features.
        subsets: number of repeats (>= 2 for a std).
        seed: resampling seed.
        subset_size: rows per repeat, or None for full-size bootstrap.

    Returns:
        ``(mean, std)`` with ``ddof=1``.
    """
    real, fake = _as_float64(real), _as_float64(fake)
    if subset_size is not None and subset_size > min(len(real), len(fake)):
        raise ValueError(f"subset_size {subset_size} exceeds the smaller set ({min(len(real), len(fake))})")
    rng = np.random.default_rng(seed)
    replace = subset_size is None

    def draw(x: np.ndarray) -> np.ndarray:
        return x[rng.choice(len(x), size=subset_size or len(x), replace=replace)]

    scores = np.array([fid_numpy(draw(real), draw(fake)) for _ in range(subsets)])
    return float(scores.mean()), float(scores.std(ddof=1)) if subsets > 1 else 0.0
