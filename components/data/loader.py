"""A data loader that keeps the whole uint8 data set as one tensor on the device.

No per-sample Python, no worker processes: each batch is an index into one tensor,
converted to float [-1, 1] on the device. It shards like ``DistributedSampler``: each epoch
one permutation from ``(seed, epoch)``, padded to a multiple of the world size, rank ``r``
takes every ``world_size``-th index, so every rank runs the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


class TensorLoader:
    """Iterate ``(images, labels)`` batches: float ``(B, C, H, W)`` in [-1, 1] and int64 ``(B,)``.

    Args:
        images: uint8 ``(N, C, H, W)`` array or tensor.
        labels: int ``(N,)``.
        batch_size: per-worker batch size.
        device: where the data lives and batches are made.
        shuffle: reshuffle every epoch (call ``set_epoch``).
        seed: shuffle seed, shared by all ranks so their shards are disjoint.
        rank, world_size: this worker's shard.
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
        rank: int = 0,
        world_size: int = 1,
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
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        per_rank = -(-len(self.images) // world_size)  # ceil
        self.num_batches = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
        if self.num_batches == 0:
            raise ValueError(f"{len(self.images)} images cannot fill one batch of {batch_size} on {world_size} workers")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def shard_indices(self) -> Tensor:
        """This rank's indices for the current epoch (on the CPU)."""
        n = len(self.images)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        total = -(-n // self.world_size) * self.world_size
        if total > n:  # pad by wrapping, as DistributedSampler does
            order = torch.cat([order, order[: total - n]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        index = self.shard_indices().to(self.device)
        for b in range(self.num_batches):
            idx = index[b * self.batch_size : (b + 1) * self.batch_size]
            # index_select, not images[idx]: the same rows, ~3x cheaper on the CPU (advanced
            # indexing takes a general path); see docs/benchmarks.md.
            images = self.images.index_select(0, idx).float().div_(127.5).sub_(1.0)  # (B, C, H, W) in [-1, 1]
            yield images, self.labels.index_select(0, idx)
