"""Reading the prepared data set written by the fetch stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.models.base import DataSpec


class DataError(Exception):
    """Prepared data that is missing or malformed; the message says what to run."""


@dataclass
class Split:
    """One split: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray


def load_split(data_dir: str | Path, split: str) -> Split:
    """Load ``train`` or ``test`` from ``data_dir/<split>.npz`` as ``(N, C, H, W)`` uint8."""
    path = Path(data_dir) / f"{split}.npz"
    if not path.exists():
        raise DataError(f"{path} not found: run `python -m pipelines.fetch` (or `dvc repro fetch`) first")
    try:
        with np.load(path) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is corrupt ({exc}): delete it and re-run the fetch stage") from None
    if images.ndim == 3:  # (N, H, W) -> (N, 1, H, W)
        images = images[:, None]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataError(f"{path}: expected uint8 images (N, C, H, W) and N labels, got {images.dtype} {images.shape}")
    return Split(images=images, labels=labels.astype(np.int64))


def load_meta(data_dir: str | Path) -> dict:
    """The fetch stage's ``meta.json`` (source, checksums, class names, counts)."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{path} not found: run the fetch stage first")
    return json.loads(path.read_text())


def spec_from_meta(meta: dict) -> DataSpec:
    """DataSpec from ``meta.json``."""
    c, h, w = meta["shape"]
    return DataSpec(channels=c, height=h, width=w, num_classes=len(meta["class_names"]))


def data_checksum(data_dir: str | Path) -> str:
    """A short digest of the prepared data (sha256 over the per-file checksums in meta.json)."""
    meta = load_meta(data_dir)
    digest = hashlib.sha256(json.dumps(meta["prepared_sha256"], sort_keys=True).encode()).hexdigest()
    return digest[:16]
