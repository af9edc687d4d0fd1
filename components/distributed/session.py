"""Where a worker function runs: in this process (``LocalSession``) or as a Ray Train worker
(``RaySession``). The worker bodies (``train_jobs.py``, ``inference_jobs.py``) talk only to this
small interface, the ``Session`` protocol, so the same code runs with and without Ray; only
``RaySession`` imports Ray.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from components.distributed.datasets import LocalData, RankData, RayShardData, Source, rank_dataset_name


class Session(Protocol):
    """What a worker body may ask of where it runs (``LocalSession`` or ``RaySession``)."""

    rank: int
    world_size: int
    node: str
    device: torch.device

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        """The folder of the newest reported checkpoint (None on a fresh start), while in the block."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Report a training job's metrics, and a checkpoint folder to resume from (every rank calls
        it; the ranks' files land in one folder, the newest of which ``run_job`` returns)."""
        ...

    def send_results(self, folder: Path) -> None:
        """Hand a job's result files back to the driver, once, at its end (every rank calls it with
        its own files; ``run_job`` returns them in one folder). Nothing resumes from them."""
        ...

    def prepare(self, module: nn.Module) -> nn.Module:
        """Wrap a network for data-parallel training (DDP), or return it as it is."""
        ...

    def broadcast(self, module: nn.Module) -> None:
        """Overwrite ``module``'s parameters and buffers on every rank with rank 0's, in place."""
        ...

    def dataset(self, name: str) -> RankData:
        """This rank's share of the job's data source ``name`` (``run_job``'s ``datasets``)."""
        ...


class LocalSession:
    """One process, no Ray: checkpoints go to ``checkpoint_root/<n>/``, the newest is resumed;
    results to ``checkpoint_root/results/``."""

    rank = 0
    world_size = 1
    node = "local"

    def __init__(self, checkpoint_root: str | Path | None = None, device: str | torch.device | None = None,
                 datasets: dict[str, Source] | None = None):
        self.datasets = dict(datasets or {})
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.root = Path(checkpoint_root) if checkpoint_root else Path(tempfile.mkdtemp(prefix="local-session-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.results = self.root / "results"  # what ``send_results`` was given

    def _checkpoints(self) -> list[Path]:
        return sorted((p for p in self.root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = self._checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        del metrics  # one process: nothing collects them (the callbacks log what is kept)
        if checkpoint_dir is not None:
            number = len(self._checkpoints())
            shutil.copytree(checkpoint_dir, self.root / f"{number:06d}")

    def send_results(self, folder: Path) -> None:
        shutil.rmtree(self.results, ignore_errors=True)  # one rank: its files are the results
        shutil.copytree(folder, self.results)

    def prepare(self, module: nn.Module) -> nn.Module:
        return module

    def broadcast(self, module: nn.Module) -> None:
        del module  # one rank: nothing to agree on

    def dataset(self, name: str) -> RankData:
        if name not in self.datasets:
            raise KeyError(f"no data source {name!r} in this job (sources: {sorted(self.datasets)})")
        return LocalData(self.datasets[name])


class RaySession:
    """Inside a ``TorchTrainer`` worker: DDP through ``prepare_model``, checkpoints through ``report``."""

    def __init__(self) -> None:
        import ray
        import ray.train
        import ray.train.torch

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node = ray.get_runtime_context().get_node_id()

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        import pyarrow.fs

        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
            yield Path(checkpoint.path)
            return
        # Each worker downloads its own copy rather than using ``as_directory``: Ray's shared
        # temporary folder races when one worker deletes it just as another on the same node
        # starts to read ("Checkpoint directory ... does not exist", seen in CI with 2 workers).
        with tempfile.TemporaryDirectory(prefix="genmodels-resume-") as folder:
            checkpoint.to_directory(folder)
            yield Path(folder)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        checkpoint = self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=checkpoint)

    def send_results(self, folder: Path) -> None:
        # Ray Train's one way for every worker's files to reach the driver, on any node: the run's
        # last reported checkpoint (``Result.checkpoint``). The driver reads it once and deletes the run.
        self._train.report({}, checkpoint=self._train.Checkpoint.from_directory(str(folder)))

    def prepare(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        if self.world_size == 1:
            return module  # DDP over one process only adds overhead
        return ray.train.torch.prepare_model(module, move_to_device=False)

    def broadcast(self, module: nn.Module) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        # state_dict tensors share storage with the module's: BatchNorm running statistics included
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def dataset(self, name: str) -> RankData:
        return RayShardData(self._train.get_dataset_shard(rank_dataset_name(name, self.rank)))
