"""Does a conditional model draw the class it was asked for? Judged by the in-domain classifier.

The same number on real test images (with their true labels) is the classifier's own
accuracy: the ceiling a conditional model can reach under this judge, to report beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from components.metrics.features import apply_batched


def conditional_accuracy(predicted: np.ndarray | Tensor, requested: np.ndarray | Tensor) -> float:
    """Share of samples whose predicted class is the requested one.

    Args:
        predicted: ``(N,)`` classes the classifier sees (the arg-max of its logits).
        requested: ``(N,)`` classes the generator was asked for.

    Returns:
        Accuracy in [0, 1].
    """
    pred = torch.as_tensor(predicted).cpu().long()
    want = torch.as_tensor(requested).cpu().long()
    if pred.shape != want.shape or pred.dim() != 1 or len(pred) == 0:
        raise ValueError(
            f"expected two equal, non-empty (N,) label arrays, got {tuple(pred.shape)} and {tuple(want.shape)}"
        )
    return float((pred == want).double().mean())


def classifier_accuracy(
    logits_fn: Callable[[Tensor], Tensor],
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> float:
    """Accuracy of a classifier on labelled uint8 images (conditional accuracy of real data).

    Args:
        logits_fn: uint8 ``(B, C, H, W)`` -> ``(B, num_classes)`` logits.
        images: uint8 ``(N, C, H, W)``.
        labels: ``(N,)`` true classes.
        batch_size: images per forward pass.
        device: where ``logits_fn`` runs.

    Returns:
        Accuracy in [0, 1].
    """
    logits = apply_batched(logits_fn, images, batch_size, device)  # (N, num_classes)
    return conditional_accuracy(logits.argmax(axis=1), labels)
