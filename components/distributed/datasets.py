"""What a job reads, and how each rank gets its share: Ray Datasets (``TorchTrainer(datasets=...)``)
under Ray, plain arrays in ``--plain``. No data travels in the job spec (``train_loop_config``).

A source is either rows of the prepared data (``PreparedSource``: the fetch stage's Parquet shards)
or arrays the driver holds (``ArraySource``: image sets to embed). Under Ray, the driver, which
has the files, deals the rows to the ranks (row ``i`` to rank ``i % W``, equal shares) and puts
each rank's share into Ray's object store block by block, as a Ray Dataset of its own; each rank,
on any node, reads only its own from there. The split is the driver's, so it is the same every run.

Why not Ray Train's ``streaming_split``: it runs every split dataset through a ``SplitCoordinator``
actor, one more fresh process importing Ray Data per job and dataset, that the ranks then pull
every block through: 2.7 s of a trivial 2-worker job on a 2-vCPU VM (11.9 s against 8.8 s,
``benchmarks/stage_overhead.py --fixed-cost``). A rank that iterates a dataset of its own reads
the blocks directly.

Each rank sees a ``RankData`` (``Session.dataset(name)``): its rows as arrays (``arrays``), or
as a stream of batches (``batches``). Images are flat uint8 rows here; callers reshape them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.dataset import checked
from components.data.shards import image_table, table_arrays, verify_split

ROWS_PER_BLOCK = 256  # rows per Ray Data block: what a rank fetches from the object store at a time
PAD = -1  # ArraySource's ``index`` of the rows that pad a set to a multiple of the world size


class RankData(Protocol):
    """One rank's share of a named source."""

    def arrays(self) -> dict[str, np.ndarray]:
        """Every row of this rank's share at once: ``image`` uint8 ``(N, C*H*W)`` and int64 columns."""
        ...

    def batches(self, batch_size: int, *, prefetch: int = 1, shuffle_buffer: int | None = None,
                seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """This rank's rows in batches (the last one may be short), read as they are used."""
        ...


@dataclass(frozen=True)
class PreparedSource:
    """A split of the fetch stage's output: the shard files (verified by the caller) in order."""

    files: tuple[str, ...]  # absolute paths

    def table(self) -> pa.Table:
        return pa.concat_tables([pq.read_table(f) for f in self.files]) if self.files else _empty()

    def rank_datasets(self, world_size: int) -> list[Any]:
        """Each rank's share as a Ray Dataset whose blocks this (the driver's) process put into the object store.

        Row ``i`` of the split goes to rank ``i % world_size``, so every rank's share spans the whole
        split (class-sorted data gives each rank every class); the shares are cut to equal length,
        so that the ranks take the same number of steps, dropping at most ``world_size - 1`` rows.
        Not ``read_parquet("local://...")``: its file listing needs a free CPU, and the train
        workers hold every CPU of a small cluster (2 workers on 2 CPUs), so it would wait forever.
        One shard is in this process' memory at a time; Ray spills blocks beyond the object
        store's size to disk, and ranks fetch only their own.
        """
        total = sum(pq.read_metadata(f).num_rows for f in self.files)
        shares = [RankBlocks(total // world_size) for _ in range(world_size)]
        start = 0
        for f in self.files:
            table = pq.read_table(f, columns=["image", "label"])
            for share, rows in zip(shares, deal_rows(table, start, world_size), strict=True):
                share.add(rows)
            start += len(table)
        return [share.dataset() for share in shares]


@dataclass(frozen=True)
class ArraySource:
    """Images the driver holds (generated samples, reference sets), with their row ``index``.

    Under Ray they are padded to a multiple of the world size (``index`` = ``PAD``) so that the
    even split Ray Train makes loses no row; ``rank_rows`` drops the padding again.
    """

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray | None = None  # int (N,): a ``label`` column too

    def table(self) -> pa.Table:
        return self._table(self.images, np.arange(len(self.images)), self.labels)

    def _table(self, images: np.ndarray, index: np.ndarray, labels: np.ndarray | None) -> pa.Table:
        return image_table(images, index=index, **({} if labels is None else {"label": labels}))

    def rank_datasets(self, world_size: int) -> list[Any]:
        """Each rank's rows as a Ray Dataset (``PreparedSource.rank_datasets``), padded first."""
        n = len(self.images)
        pad = -n % world_size
        take = np.concatenate([np.arange(n), np.arange(pad) % max(n, 1)])
        index = np.concatenate([np.arange(n), np.full(pad, PAD)])
        table = self._table(self.images[take], index, None if self.labels is None else self.labels[take])
        shares = [RankBlocks(len(table) // world_size) for _ in range(world_size)]
        for share, rows in zip(shares, deal_rows(table, 0, world_size), strict=True):
            share.add(rows)
        return [share.dataset() for share in shares]


Source = PreparedSource | ArraySource


def deal_rows(table: pa.Table, start: int, world_size: int) -> list[pa.Table]:
    """``table``'s rows by rank, when its first row is row ``start`` of the whole source: row
    ``start + i`` goes to rank ``(start + i) % world_size``, in order."""
    return [table.take(np.arange((rank - start) % world_size, len(table), world_size))
            for rank in range(world_size)]


class RankBlocks:
    """One rank's share, put into the object store in blocks of ``ROWS_PER_BLOCK`` rows as it
    grows, up to ``limit`` rows (the equal share; later rows are dropped)."""

    def __init__(self, limit: int):
        self.limit, self.rows = limit, 0
        self.pending: list[pa.Table] = []
        self.blocks: list[tuple[Any, Any]] = []

    def add(self, table: pa.Table) -> None:
        table = table.slice(0, max(0, self.limit - self.rows))
        self.rows += len(table)
        self.pending.append(table)
        if sum(len(t) for t in self.pending) >= ROWS_PER_BLOCK:
            self._flush(whole_blocks_only=True)

    def dataset(self) -> Any:
        """The share as a Ray Dataset (an empty share: one empty block of the right schema)."""
        self._flush(whole_blocks_only=False)
        return blocks_dataset(self.blocks)

    def _flush(self, whole_blocks_only: bool) -> None:
        pending = pa.concat_tables(self.pending) if self.pending else None
        self.pending = []
        if pending is None:
            if not self.blocks:
                self.blocks.append(put_block(_empty()))
            return
        end = len(pending) - len(pending) % ROWS_PER_BLOCK if whole_blocks_only else len(pending)
        self.blocks += [put_block(pending.slice(s, min(ROWS_PER_BLOCK, end - s))) for s in range(0, end, ROWS_PER_BLOCK)]
        if end < len(pending):
            self.pending.append(pending.slice(end))
        if not self.blocks:
            self.blocks.append(put_block(pending.slice(0, 0)))


def rank_dataset_name(name: str, rank: int) -> str:
    """The name under which rank ``rank``'s share of source ``name`` reaches ``TorchTrainer``."""
    return f"{name}.rank{rank}"


def put_block(table: pa.Table) -> tuple[Any, Any]:
    """``table`` into the object store, with its Ray Data block metadata computed here."""
    import ray
    from ray.data._internal.util import get_table_block_metadata_schema

    return ray.put(table), get_table_block_metadata_schema(table)


def blocks_dataset(blocks: list[tuple[Any, Any]]) -> Any:
    """``ray.data.from_arrow_refs`` for blocks this process put, with the metadata it computed.

    ``from_arrow_refs`` computes each block's metadata in a remote task, which costs the job one
    more worker process (≈ 3 CPU-s to start on this 2-core machine, for a row count and a schema
    the driver already has). This builds the same ``MaterializedDataset`` the way it does, from
    Ray's internal classes (the lock pins Ray; ``tests/test_ray_data.py`` compares the two).
    """
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import FromArrow
    from ray.data._internal.stats import DatasetStats
    from ray.data.context import DataContext
    from ray.data.dataset import MaterializedDataset

    refs = [ref for ref, _ in blocks]
    metadata = [meta for _, meta in blocks]
    context = DataContext.get_current().copy()
    return MaterializedDataset(LogicalPlan(FromArrow(refs, metadata), context), context,
                               DatasetStats(metadata={"FromArrow": metadata}, parent=None))


def prepared(data_dir: str | Path, split: str) -> PreparedSource:
    """``split`` of the fetch stage's output as a source, every shard verified against ``meta.json`` first.

    Raises:
        DataError: one line naming the missing, truncated or corrupt file and saying to re-run fetch.
    """
    files = checked(verify_split, data_dir, split)
    return PreparedSource(tuple(str(f.resolve()) for f in files))


def rank_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows without an ArraySource's padding."""
    if "index" not in rows:
        return rows
    keep = rows["index"] != PAD
    return rows if keep.all() else {k: v[keep] for k, v in rows.items()}


def flat_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """A shard-format table as arrays, ``image`` flat ``(N, C*H*W)``."""
    width = table.schema.field("image").type.byte_width
    return table_arrays(table, (width,))


class LocalData:
    """``RankData`` of a one-process run: the whole source, read once."""

    def __init__(self, source: Source):
        self.source = source
        self._rows: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            self._rows = flat_arrays(self.source.table())
        return self._rows

    def batches(self, batch_size: int, *, prefetch: int = 1, shuffle_buffer: int | None = None,
                seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        rows = self.arrays()
        order = np.arange(len(rows["image"]))
        if shuffle_buffer:
            order = np.random.default_rng(seed).permutation(order)
        for start in range(0, len(order), batch_size):
            take = order[start : start + batch_size]
            yield {k: v[take] for k, v in rows.items()}


class RayShardData:
    """``RankData`` of a Ray Train worker: ``ray.train.get_dataset_shard(name)``."""

    def __init__(self, iterator: Any):
        self.iterator = iterator

    def arrays(self) -> dict[str, np.ndarray]:
        tables = list(self.iterator.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
        table = pa.concat_tables(tables) if tables else _empty()
        return {k: np.array(v) for k, v in rank_rows(flat_arrays(table)).items()}  # own copies: blocks are read-only

    def batches(self, batch_size: int, *, prefetch: int = 1, shuffle_buffer: int | None = None,
                seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        for table in self.iterator.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                                prefetch_batches=prefetch, local_shuffle_buffer_size=shuffle_buffer,
                                                local_shuffle_seed=seed if shuffle_buffer else None):
            yield rank_rows(flat_arrays(table))


def ray_datasets(sources: dict[str, Source], world_size: int) -> tuple[dict[str, Any], Any]:
    """``TorchTrainer``'s ``datasets`` and ``dataset_config`` for ``sources``: one dataset per source
    and rank (``rank_dataset_name``), none of them split by Ray Train (every worker is handed all of
    them and reads only its own: ``RaySession.dataset``)."""
    from ray.data import DataContext, ExecutionOptions
    from ray.train import DataConfig

    from components.distributed import console

    # The ranks run these datasets themselves, under this process' DataContext (Train copies it to
    # them): their progress bars would reach the terminal as the training worker's own lines.
    DataContext.get_current().enable_progress_bars = console.verbose()
    datasets = {}
    for name, source in sources.items():
        shares = source.rank_datasets(world_size)
        if len(shares) != world_size:
            raise ValueError(f"source {name}: {len(shares)} shares for {world_size} ranks")
        datasets.update({rank_dataset_name(name, rank): share for rank, share in enumerate(shares)})
    return datasets, DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


def _empty() -> pa.Table:
    return pa.table({"image": pa.array([], type=pa.binary(1)), "label": pa.array([], type=pa.int64())})
