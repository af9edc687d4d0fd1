"""Worker bodies that run trained models: draw images (``sample_job``), embed images (``features_job``).

Work is split in fixed-size chunks: chunk ``j`` goes to worker ``j % world_size`` and its randomness
depends on ``j`` only, so the output does not depend on the worker count. No training code here.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.distributed.session import Session
from components.models.base import GenerativeModel, TrainableModel


def chunk_ranges(total: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(total)`` in fixed-size chunks."""
    return [(s, min(s + chunk, total)) for s in range(0, total, chunk)]


def chunk_seed(seed: int, index: int) -> int:
    """Seed of chunk ``index``: depends on the chunk, never on the worker, so output ignores worker count."""
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


def _save_array_chunk(folder: Path, index: int, **arrays: np.ndarray) -> None:
    np.savez(folder / f"chunk_{index:06d}.npz", **arrays)


def merge_chunks(folder: str | Path) -> dict[str, np.ndarray]:
    """Concatenate every ``chunk_*.npz`` in ``folder`` in chunk order."""
    files = sorted(Path(folder).glob("chunk_*.npz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no chunks")
    parts: dict[str, list[np.ndarray]] = {}
    for f in files:
        with np.load(f) as npz:
            for key in npz.files:
                parts.setdefault(key, []).append(npz[key])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _model_from_bytes(blob: bytes, device: torch.device) -> TrainableModel:
    from components.training.checkpoint import model_from_checkpoint

    payload = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    return model_from_checkpoint(payload, device)


def sample_job(job: dict[str, Any], session: Session) -> None:
    """Generate named image sets (``job["sets"]``: name -> checkpoint bytes and count) in fixed chunks.

    Chunk ``j`` of a set goes to worker ``j % world_size`` and draws from ``chunk_seed(seed, j)``,
    so the output does not depend on the worker count. Labels are spread evenly over the
    classes (``i % K``): conditional models are asked for each class equally.
    """
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory() as folder:
        for set_index, (set_name, spec) in enumerate(sorted(job["sets"].items())):
            model = _model_from_bytes(spec["checkpoint"], session.device)
            assert isinstance(model, GenerativeModel)
            model.eval()
            out = Path(folder) / set_name
            out.mkdir()
            chunks = chunk_ranges(spec["num_samples"], job["batch_size"])
            mine = [(j, r) for j, r in enumerate(chunks) if j % session.world_size == session.rank]
            for j, (start, stop) in tqdm(mine, desc=f"sample {job['name']}/{set_name}", disable=session.rank != 0):
                labels = torch.arange(start, stop, device=session.device) % model.spec.num_classes
                gen = torch.Generator(device=session.device).manual_seed(chunk_seed(job["seed"] + set_index, j))
                images = model.sample(stop - start, labels=labels if model.is_conditional else None, generator=gen)
                _save_array_chunk(out, j, images=images.cpu().numpy(), labels=labels.cpu().numpy())
        session.report({"sets": len(job["sets"])}, Path(folder))


def features_job(job: dict[str, Any], session: Session) -> None:
    """Embed named uint8 image sets with the classifier; chunk ``j`` of every set goes to worker ``j % W``.

    Also stores the classifier's predicted label per image (for conditional accuracy).
    """
    model = _model_from_bytes(job["checkpoint"], session.device)
    with tempfile.TemporaryDirectory() as folder:
        embed_sets(model, job["image_sets"], job["batch_size"], session, Path(folder))
        session.report({"sets": len(job["image_sets"])}, Path(folder))


def embed_sets(model: TrainableModel, image_sets: dict[str, np.ndarray], batch_size: int, session: Session,
               folder: Path) -> None:
    """Embed each named uint8 set with the classifier ``model``: ``folder/<set>/chunk_*.npz`` holding
    ``features`` (float64) and ``predicted`` (the classifier's label), this rank's chunks only."""
    from tqdm.auto import tqdm

    model.eval()
    for set_name, images in sorted(image_sets.items()):
        chunks = chunk_ranges(len(images), batch_size)
        mine = [(j, r) for j, r in enumerate(chunks) if j % session.world_size == session.rank]
        out = folder / set_name
        out.mkdir()
        for j, (start, stop) in tqdm(mine, desc=f"features {set_name}", disable=session.rank != 0):
            batch = torch.as_tensor(images[start:stop], device=session.device).float().div(127.5).sub(1.0)
            features, predicted = model.embed_and_predict(batch)
            _save_array_chunk(out, j, features=features.double().cpu().numpy(), predicted=predicted.cpu().numpy())
