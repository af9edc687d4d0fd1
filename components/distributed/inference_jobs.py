"""Worker bodies that run trained models: draw images (``sample_job``), embed images (``features_job``).

Work is split in fixed-size chunks: chunk ``j`` goes to worker ``j % world_size`` and its randomness
depends on ``j`` only, so the output does not depend on the worker count. No training code here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from components.distributed.jobs import FeaturesJob, SampleJob
from components.distributed.session import Session
from components.models.base import GenerativeModel, TrainableModel
from components.models.sampling import draw_balanced
from components.training.checkpoint import model_from_checkpoint


def chunk_ranges(total: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(total)`` in fixed-size chunks."""
    return [(s, min(s + chunk, total)) for s in range(0, total, chunk)]


def chunk_seed(seed: int, index: int) -> int:
    """Seed of chunk ``index``: depends on the chunk, never on the worker, so output ignores worker count."""
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


def set_source(name: str) -> str:
    """The data source name under which an image set to embed reaches the workers."""
    return f"set-{name}"


def _save_array_chunk(folder: Path, name: str, **arrays: np.ndarray) -> None:
    np.savez(folder / f"chunk_{name}.npz", **arrays)


def merge_chunks(folder: str | Path) -> dict[str, np.ndarray]:
    """Concatenate every ``chunk_*.npz`` in ``folder`` in chunk order, or by their ``index`` rows when
    they have one (``embed_sets``: ranks read rows in any order); ``index`` is then dropped."""
    files = sorted(Path(folder).glob("chunk_*.npz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no chunks")
    parts: dict[str, list[np.ndarray]] = {}
    for f in files:
        with np.load(f) as npz:
            for key in npz.files:
                parts.setdefault(key, []).append(npz[key])
    merged = {k: np.concatenate(v) for k, v in parts.items()}
    if "index" in merged:
        order = np.argsort(merged.pop("index"), kind="stable")
        merged = {k: v[order] for k, v in merged.items()}
    return merged


def sample_job(job: SampleJob, session: Session) -> None:
    """Generate named image sets (``job.sets``: name -> checkpoint bytes and count) in fixed chunks.

    Chunk ``j`` of a set goes to worker ``j % world_size`` and draws from ``chunk_seed(seed, j)``,
    so the output does not depend on the worker count. Labels are spread evenly over the
    classes (``draw_balanced``: ``i % K``): conditional models are asked for each class equally.
    """
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory() as folder:
        for set_index, (set_name, spec) in enumerate(sorted(job.sets.items())):
            model = model_from_checkpoint(spec.checkpoint, session.device)
            assert isinstance(model, GenerativeModel)
            model.eval()
            out = Path(folder) / set_name
            out.mkdir()
            chunks = chunk_ranges(spec.num_samples, job.batch_size)
            mine = [(j, r) for j, r in enumerate(chunks) if j % session.world_size == session.rank]
            for j, (start, stop) in tqdm(mine, desc=f"sample {job.name}/{set_name}", disable=session.rank != 0):
                images, labels = draw_balanced(model, stop - start, chunk_seed(job.seed + set_index, j), start)
                _save_array_chunk(out, f"{j:06d}", images=images.cpu().numpy(), labels=labels.cpu().numpy())
        session.send_results(Path(folder))


def features_job(job: FeaturesJob, session: Session) -> None:
    """Embed the uint8 image sources named in ``job.image_sets`` with the classifier; each rank its share.

    Also stores the classifier's predicted label per image (for conditional accuracy).
    """
    model = model_from_checkpoint(job.checkpoint, session.device)
    with tempfile.TemporaryDirectory() as folder:
        embed_sets(model, job.image_sets, job.batch_size, session, Path(folder))
        session.send_results(Path(folder))


def embed_sets(model: TrainableModel, image_sets: tuple[str, ...], batch_size: int, session: Session,
               folder: Path) -> None:
    """Embed the named uint8 image sources (``session.dataset(name)``) with the classifier ``model``:
    ``folder/<set>/chunk_<rank>_<n>.npz`` holding ``features`` (float64), ``predicted`` (the
    classifier's label) and ``index`` (the rows' place in the set), this rank's rows only."""
    from tqdm.auto import tqdm

    model.eval()
    shape = (model.spec.channels, model.spec.height, model.spec.width)
    for set_name in sorted(image_sets):
        out = folder / set_name
        out.mkdir()
        batches = session.dataset(set_source(set_name)).batches(batch_size, prefetch=2)
        for j, rows in enumerate(tqdm(batches, desc=f"features {set_name}", disable=session.rank != 0)):
            if not len(rows["image"]):
                continue
            batch = torch.tensor(rows["image"], device=session.device).view(-1, *shape).float().div(127.5).sub(1.0)
            features, predicted = model.embed_and_predict(batch)
            _save_array_chunk(out, f"{session.rank:03d}_{j:06d}", features=features.double().cpu().numpy(),
                              predicted=predicted.cpu().numpy(), index=rows["index"])
