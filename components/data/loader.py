"""Data loaders for the training loop: ``TensorLoader`` keeps a uint8 data set as one tensor on
the device; ``StreamLoader`` turns a stream of uint8 batches (Ray Data) into the same batches.

TensorLoader: no per-sample Python, no worker processes: each batch is an index into one tensor,
converted to float [-1, 1] on the device, in one permutation per epoch from ``(seed, epoch)``.
It holds one rank's share: Ray Data splits the data over the ranks evenly
(``components/distributed/datasets.py``), so every rank runs the same number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor


class _Batches:
    """What both loaders share: an epoch to set, a length in batches, uint8 to float [-1, 1]."""

    epoch: int
    num_batches: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    @staticmethod
    def to_float(images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> float in [-1, 1]."""
        return images.float().div_(127.5).sub_(1.0)


class TensorLoader(_Batches):
    """Iterate ``(images, labels)`` batches: float ``(B, C, H, W)`` in [-1, 1] and int64 ``(B,)``.

    Args:
        images: uint8 ``(N, C, H, W)`` array or tensor.
        labels: int ``(N,)``.
        batch_size: per-worker batch size.
        device: where the data lives and batches are made.
        shuffle: reshuffle every epoch (call ``set_epoch``).
        seed: shuffle seed (the train job gives each rank its own: ``seed + rank``).
        drop_last: drop the last incomplete batch (keeps batch norm and DDP steps even).
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        self.device = torch.device(device)
        # torch.tensor copies: arrays from Ray's object store are read-only views.
        self.images = torch.tensor(images, device=self.device) if not torch.is_tensor(images) else images.to(self.device)
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.int64, device=self.device)
        if self.images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {self.images.dtype}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        n = len(self.images)
        self.num_batches = n // batch_size if drop_last else -(-n // batch_size)
        if self.num_batches == 0:
            raise ValueError(f"{n} images cannot fill one batch of {batch_size}")

    def epoch_indices(self) -> Tensor:
        """The order of the rows in the current epoch (on the CPU)."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        index = self.epoch_indices().to(self.device)
        for b in range(self.num_batches):
            idx = index[b * self.batch_size : (b + 1) * self.batch_size]
            # index_select, not images[idx]: the same rows, ~3x cheaper on the CPU (advanced
            # indexing takes a general path); see docs/benchmarks.md.
            images = self.to_float(self.images.index_select(0, idx))  # (B, C, H, W) in [-1, 1]
            yield images, self.labels.index_select(0, idx)


class StreamLoader(_Batches):
    """Iterate ``(images, labels)`` batches like ``TensorLoader`` from uint8 batches read as they are used.

    Args:
        batches: ``batches(epoch)`` yields dicts with ``image`` uint8 ``(B, C*H*W)`` and ``label``
            (one epoch, reshuffled by ``epoch``); batches shorter than ``batch_size`` are dropped.
        rows: rows this rank gets per epoch (every rank the same: the split is even).
        shape: ``(C, H, W)``.
        batch_size, device: as for ``TensorLoader``.
    """

    def __init__(self, batches: Callable[[int], Iterator[dict[str, np.ndarray]]], rows: int, shape: tuple[int, int, int],
                 batch_size: int, device: torch.device | str = "cpu"):
        self.batches, self.shape, self.batch_size = batches, shape, batch_size
        self.device = torch.device(device)
        self.epoch = 0
        self.num_batches = rows // batch_size
        if self.num_batches == 0:
            raise ValueError(f"{rows} images per worker cannot fill one batch of {batch_size}")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        done = 0
        for batch in self.batches(self.epoch):  # read to the end: Ray's split starts the next epoch after it
            if done == self.num_batches or len(batch["image"]) < self.batch_size:
                continue  # every rank runs the same number of full steps (DDP)
            # torch.tensor copies: the batch is a read-only view of Arrow buffers
            images = torch.tensor(batch["image"], device=self.device).view(-1, *self.shape)
            yield self.to_float(images), torch.tensor(batch["label"], device=self.device)  # (B, C, H, W)
            done += 1
        if done < self.num_batches:
            raise RuntimeError(f"the data stream ended after {done} of {self.num_batches} batches")
