"""Images -> feature arrays, computed once per image set and reused by every metric."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def iter_batches(images: np.ndarray | Tensor, batch_size: int, progress: bool = False, desc: str = "features"):
    """Yield ``(B, C, H, W)`` uint8 CPU tensors of at most ``batch_size`` images, in order."""
    data = torch.as_tensor(images)
    if data.dtype != torch.uint8 or data.dim() != 4:
        raise TypeError(f"expected uint8 images (N, C, H, W), got {data.dtype} {tuple(data.shape)}")
    starts = range(0, len(data), batch_size)
    if progress:
        from tqdm.auto import tqdm  # optional; only imported when asked for

        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield data[start : start + batch_size]


@torch.no_grad()
def apply_batched(
    fn: Callable[[Tensor], Tensor],
    images: np.ndarray | Tensor,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Run ``fn`` over uint8 images in batches on ``device``; concatenate the outputs.

    Args:
        fn: uint8 ``(B, C, H, W)`` on ``device`` -> ``(B, D)``.
        images: uint8 ``(N, C, H, W)`` array or tensor (may live on the CPU).
        batch_size: images per forward pass.
        device: where ``fn`` runs.
        progress: show a tqdm bar.

    Returns:
        float64 ``(N, D)`` array.
    """
    outputs = [fn(batch.to(device)).double().cpu() for batch in iter_batches(images, batch_size, progress)]
    return torch.cat(outputs).numpy()
