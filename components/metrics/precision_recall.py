"""k-NN manifold metrics: improved precision/recall and density/coverage.

Each sample gets a ball whose radius is the distance to its k-th nearest neighbour in its
own set (itself excluded). Then, with real set R (size N) and fake set F (size M):

- precision: share of fakes inside at least one real ball (fidelity),
- recall: share of reals inside at least one fake ball (diversity),
  Kynkäänniemi et al. 2019, https://arxiv.org/abs/1904.06991;
- density: (1 / kM) * sum over fakes of the number of real balls holding it (can exceed 1),
- coverage: share of reals whose own ball holds at least one fake,
  Naeem et al. 2020, https://arxiv.org/abs/2002.09797 (more robust to outliers in R).

Distances are computed in row chunks so that 10k x 10k never materialises a full matrix.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def _as_tensor(features: np.ndarray | Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    out = torch.as_tensor(features).to(device=device, dtype=dtype)
    if out.dim() != 2:
        raise ValueError(f"expected features (N, D), got {tuple(out.shape)}")
    return out


def _chunks(x: Tensor, chunk: int) -> Iterator[tuple[int, Tensor]]:
    for start in range(0, len(x), chunk):
        yield start, x[start : start + chunk]


def knn_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each row to its k-th nearest other row.

    Args:
        x: ``(N, D)`` features, ``N > k``.
        k: neighbour rank.
        chunk: rows per distance block (memory ~ ``chunk * N`` floats).

    Returns:
        ``(N,)`` radii.
    """
    if len(x) <= k:
        raise ValueError(f"need more than k={k} samples, got {len(x)}")
    radii = []
    for _, rows in _chunks(x, chunk):
        dist = torch.cdist(rows, x)  # (chunk, N), includes the self-distance ~0
        # the k+1 smallest include the row itself; the largest of them is the k-th other neighbour
        radii.append(dist.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _cross_pass(
    real: Tensor, fake: Tensor, real_radii: Tensor, fake_radii: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunked pass over the real x fake distances.

    Returns:
        ``(M,)`` number of real balls holding each fake, ``(N,)`` whether each real lies in some
        fake ball, ``(N,)`` whether each real's own ball holds its nearest fake.
    """
    fake_in_real = torch.zeros(len(fake), dtype=torch.int64, device=fake.device)
    real_in_fake, covered = [], []
    for start, rows in _chunks(real, chunk):
        dist = torch.cdist(rows, fake)  # (chunk, M)
        radii = real_radii[start : start + len(rows)]  # (chunk,)
        fake_in_real += (dist <= radii.unsqueeze(1)).sum(dim=0)
        real_in_fake.append((dist <= fake_radii.unsqueeze(0)).any(dim=1))
        covered.append(dist.min(dim=1).values <= radii)
    return fake_in_real, torch.cat(real_in_fake), torch.cat(covered)


@torch.no_grad()
def precision_recall(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    k: int = 3,
    chunk: int = 1024,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """Improved precision/recall and density/coverage of ``fake`` against ``real``.

    Args:
        real: ``(N, D)`` features of real images.
        fake: ``(M, D)`` features of generated images.
        k: neighbour rank for the ball radii (3 in both papers).
        chunk: rows per distance block; peak memory is about ``chunk * max(N, M)`` numbers.
        device: where distances are computed.
        dtype: float64 by default so exact duplicates have distance 0 (radius-0 balls of a
            collapsed set then behave); float32 is about twice as fast.

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` as floats.
    """
    r = _as_tensor(real, device, dtype)  # (N, D)
    f = _as_tensor(fake, device, dtype)  # (M, D)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: {r.shape[1]} vs {f.shape[1]}")
    real_radii = knn_radii(r, k, chunk)  # (N,)
    fake_radii = knn_radii(f, k, chunk)  # (M,)
    fake_in_real, real_in_fake, covered = _cross_pass(r, f, real_radii, fake_radii, chunk)  # (M,), (N,), (N,)
    return {
        "precision": float((fake_in_real > 0).double().mean()),
        "recall": float(real_in_fake.double().mean()),
        "density": float(fake_in_real.double().sum() / (k * len(f))),
        "coverage": float(covered.double().mean()),
    }
