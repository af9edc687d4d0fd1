"""Reading the prepared data set written by the fetch stage (``meta.json`` + Parquet shards)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from components.data.shards import FORMAT, REFETCH, ShardError, read_split
from components.data.spec import DataSpec

T = TypeVar("T")


class DataError(Exception):
    """Prepared data that is missing or malformed; the message says what to run."""


@dataclass
class Split:
    """One split: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray


def load_split(data_dir: str | Path, split: str) -> Split:
    """Load ``train`` or ``test`` from ``data_dir``'s shards, each verified against ``meta.json``.

    Raises:
        DataError: one line naming the missing, truncated or corrupt file and saying to re-run fetch.
    """
    images, labels = checked(read_split, data_dir, split)
    return Split(images=images, labels=labels)


def checked(read: Callable[[Path, str, dict], T], data_dir: str | Path, split: str) -> T:
    """``read(folder, split, meta)`` on the fetch stage's output, a shard's problem raised as ``DataError``.

    Raises:
        DataError: one line naming the missing, truncated or corrupt file and saying to re-run fetch.
    """
    meta = load_meta(data_dir)
    try:
        return read(Path(data_dir), split, meta)
    except ShardError as exc:
        raise DataError(str(exc)) from None


def load_meta(data_dir: str | Path) -> dict:
    """The fetch stage's ``meta.json`` (source, shards and their checksums, class names, counts)."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{path} not found: run `python -m pipelines.fetch` (or `dvc repro fetch`) first")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}): {REFETCH}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: written by an older fetch stage (format {meta.get('format', 'npz')!r}, "
                        f"this code reads {FORMAT!r}): {REFETCH}")
    return meta


def spec_from_meta(meta: dict) -> DataSpec:
    """DataSpec from ``meta.json``."""
    c, h, w = meta["shape"]
    return DataSpec(channels=c, height=h, width=w, num_classes=len(meta["class_names"]))


def split_rows(meta: dict, split: str) -> int:
    """Images in ``split`` (``train`` or ``test``), from ``meta.json``."""
    return sum(r["rows"] for r in meta["shards"][split])


def data_checksum(data_dir: str | Path) -> str:
    """A short digest of the prepared data (sha256 over the per-file checksums in meta.json)."""
    meta = load_meta(data_dir)
    digest = hashlib.sha256(json.dumps(meta["prepared_sha256"], sort_keys=True).encode()).hexdigest()
    return digest[:16]
