"""The prepared data's on-disk format: Parquet shards of bounded size, checked against ``meta.json``.

Layout (``data/prepared/``, written by the fetch stage, tracked by DVC as one output)::

    meta.json                      shape, class names, counts, and per shard: file, rows, bytes, sha256
    train/part-00000.parquet ...   columns ``image`` (fixed_size_binary C*H*W: uint8 pixels, C-major)
    test/part-00000.parquet ...    and ``label`` (int64); one row group per shard

Every shard holds at most ``shard_mb`` MiB of pixels, so a distributed reader
(``ray.data.read_parquet("data/prepared/train")``) can hand whole files to different workers.
Readers hash each file while reading it and refuse one that does not match ``meta.json``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "test")
FORMAT = "parquet-v1"
REFETCH = "re-run `dvc repro fetch` (or `python -m pipelines.fetch`)"


class ShardError(Exception):
    """A shard that is missing, truncated, corrupt or not what ``meta.json`` describes (one line)."""


def rows_per_shard(shape: tuple[int, int, int], shard_mb: int) -> int:
    """How many images of ``shape`` fit in ``shard_mb`` MiB of pixels (at least one)."""
    c, h, w = shape
    return max(1, (shard_mb << 20) // (c * h * w))


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, shard_mb: int) -> list[dict[str, Any]]:
    """Write one split as ``root/<split>/part-NNNNN.parquet`` files; deterministic bytes for the same input.

    Args:
        root: the prepared folder being written (a temporary folder of ``atomic_dir``).
        split: ``train`` or ``test``.
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        shard_mb: upper bound on each shard's pixel bytes.

    Returns:
        One record per shard: ``{"file": "train/part-00000.parquet", "rows", "bytes", "sha256"}``.
    """
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    n, c, h, w = images.shape
    per_image = c * h * w
    step = rows_per_shard((c, h, w), shard_mb)
    flat = np.ascontiguousarray(images).reshape(n, per_image)
    records = []
    for index, start in enumerate(range(0, max(n, 1), step)):
        rows = flat[start : start + step]
        pixels = [None, pa.py_buffer(rows.tobytes())]  # no validity bitmap: no nulls
        column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(per_image), len(rows), pixels)
        table = pa.table({"image": column, "label": pa.array(labels[start : start + step], type=pa.int64())})
        path = folder / f"part-{index:05d}.parquet"
        # zstd: ~2-3x smaller than raw pixels and still fast to read; no statistics or dictionary
        # on the pixel column (they would store whole images).
        pq.write_table(table, path, compression="zstd", use_dictionary=["label"], write_statistics=["label"],
                       row_group_size=len(rows) or 1)
        payload = path.read_bytes()
        records.append({"file": f"{split}/{path.name}", "rows": len(rows), "bytes": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest()})
    return records


def read_split(root: Path, split: str, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Read and verify one split: every shard is hashed as it is read and checked against ``meta``.

    Args:
        root: the prepared folder (``data/prepared``).
        split: ``train`` or ``test``.
        meta: its ``meta.json``.

    Returns:
        ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``.

    Raises:
        ShardError: naming the file and saying to re-run fetch.
    """
    shape = tuple(meta["shape"])
    per_image = int(np.prod(shape))
    records = meta["shards"][split]
    total = sum(r["rows"] for r in records)
    images = np.empty((total, *shape), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    pos = 0
    for record in records:
        path = root / record["file"]
        payload = _read(path)
        _check(path, payload, record)
        table = pq.read_table(pa.BufferReader(payload))
        if table.num_rows != record["rows"] or table.schema.field("image").type != pa.binary(per_image):
            raise ShardError(f"{path}: {table.num_rows} rows of {table.schema.field('image').type}, meta.json "
                             f"says {record['rows']} of {shape}: {REFETCH}")
        rows = slice(pos, pos + table.num_rows)
        images[rows] = _pixels(table.column("image"), per_image).reshape(-1, *shape)
        labels[rows] = table.column("label").to_numpy()
        pos += table.num_rows
    return images, labels


def verify_split(root: Path, split: str, meta: dict[str, Any]) -> list[Path]:
    """Hash every shard of ``split`` against ``meta`` without decoding it (for readers that read later).

    Returns:
        The shard files in order.

    Raises:
        ShardError: naming the file and saying to re-run fetch.
    """
    paths = []
    for record in meta["shards"][split]:
        path = root / record["file"]
        _check(path, _read(path), record)
        paths.append(path)
    return paths


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ShardError(f"{path}: cannot read ({exc.strerror or exc}): {REFETCH}") from None


def _check(path: Path, payload: bytes, record: dict[str, Any]) -> None:
    if hashlib.sha256(payload).hexdigest() != record["sha256"]:
        raise ShardError(f"{path}: checksum mismatch with meta.json ({len(payload)} bytes, expected "
                         f"{record['bytes']}): truncated or corrupt; {REFETCH}")


def image_table(images: np.ndarray, **columns: np.ndarray) -> pa.Table:
    """The shards' row format for in-memory arrays: ``image`` fixed_size_binary + int64 ``columns``."""
    n = len(images)
    flat = np.ascontiguousarray(images).reshape(n, -1)
    pixels = pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.shape[1]), n, [None, pa.py_buffer(flat.tobytes())])
    return pa.table({"image": pixels, **{k: pa.array(v, type=pa.int64()) for k, v in columns.items()}})


def table_arrays(table: pa.Table, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A shard-format table as arrays: ``image`` uint8 ``(N, *shape)`` (a view, no copy), other columns int64."""
    out = {name: table.column(name).to_numpy() for name in table.column_names if name != "image"}
    out["image"] = _pixels(table.column("image"), int(np.prod(shape))).reshape(-1, *shape)
    return out


def _pixels(column: pa.ChunkedArray, per_image: int) -> np.ndarray:
    """``(N, per_image)`` uint8 view of a fixed_size_binary column's value buffers (no per-row Python)."""
    parts = []
    if column.num_chunks == 0:
        return np.empty((0, per_image), dtype=np.uint8)
    for chunk in column.chunks:
        buffer = chunk.buffers()[1]
        parts.append(np.frombuffer(buffer, dtype=np.uint8, count=len(chunk) * per_image,
                                   offset=chunk.offset * per_image).reshape(len(chunk), per_image))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]
