"""``python -m pipelines.sample --model NAME``: draw images from a trained model as a Ray Train job.

Writes ``samples/NAME/samples.npz`` (N images uint8 (N, C, H, W) and their labels),
``samples/NAME/ceiling.npz`` (the same architecture untrained: the metrics' ceiling row) and
``samples/NAME/grid.png``, and logs the grid to the model's MLflow run.
Same seed => same samples, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from components import tracking
from components.distributed.jobs import make_grid, merge_chunks, sample_job
from components.distributed.runner import ClusterUnreachable, StorageError, run_job, run_name
from components.io import atomic_dir
from components.models import build_model
from components.training.checkpoint import CHECKPOINT_FILE, checkpoint_payload, load_checkpoint
from pipelines.common import load_or_exit, parser, run_main


def main() -> None:
    p = parser(__doc__, model=True)
    p.add_argument("--models-dir", default="models")
    p.add_argument("--out", default=None, help="default: samples/NAME")
    args = p.parse_args()
    cfg = load_or_exit(args)
    name, scfg = args.model, cfg.sample
    model_dir, out = Path(args.models_dir) / name, Path(args.out or f"samples/{name}")
    run = tracking.read_run_file(model_dir)
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)

    trained = (model_dir / CHECKPOINT_FILE).read_bytes()
    sets = {"samples": {"checkpoint": trained, "num_samples": scfg.num_samples},
            "ceiling": {"checkpoint": _untrained(model_dir / CHECKPOINT_FILE), "num_samples": scfg.ceiling_samples}}
    job = {"name": name, "sets": sets, "batch_size": scfg.batch_size, "seed": scfg.seed}
    key = {"trained": hashlib.sha256(trained).hexdigest(), **scfg.model_dump()}
    start = time.perf_counter()
    result = run_job(sample_job, job, cfg=cfg.ray, plain=args.plain, name=run_name(f"sample-{name}", key))
    seconds = time.perf_counter() - start
    try:
        arrays = {set_name: merge_chunks(result / set_name) for set_name in sets}
    finally:
        shutil.rmtree(result, ignore_errors=True)
    images = arrays["samples"]["images"]
    grid = make_grid(images[: scfg.grid_size**2], rows=scfg.grid_size)  # labels i % K: a column per class
    with atomic_dir(out) as tmp:
        for set_name, data in arrays.items():
            np.savez(tmp / f"{set_name}.npz", images=data["images"], labels=data["labels"].astype(np.int64))
        from PIL import Image

        Image.fromarray(grid).save(tmp / "grid.png")
    c = tracking.client(uri)
    c.log_image(run["run_id"], grid, key="final_samples")
    total = scfg.num_samples + scfg.ceiling_samples
    c.log_metric(run["run_id"], "sample/seconds", seconds)
    c.log_metric(run["run_id"], "sample/images_per_s", total / seconds)
    c.set_tag(run["run_id"], "sample_seed", str(scfg.seed))
    print(f"sample {name}: {total} images in {seconds:.1f} s ({total / seconds:.0f} img/s) -> {out}")


def _untrained(checkpoint_path: Path) -> bytes:
    """A checkpoint of the same architecture and seed at initialisation (the ceiling model)."""
    from components.config import model_config_from_dict
    from components.models.base import DataSpec

    payload = load_checkpoint(checkpoint_path)
    model = build_model(model_config_from_dict(payload["config"]), DataSpec(**payload["data_spec"]))
    buffer = io.BytesIO()
    torch.save(checkpoint_payload(model, name=payload["name"] + "-untrained", epoch=0), buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    run_main(main, ClusterUnreachable, StorageError, tracking.TrackingError, FileNotFoundError)
