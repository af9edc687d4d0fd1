"""``python -m pipelines.sample --model NAME``: draw images from a trained model as a Ray Train job.

Writes ``samples/NAME/samples.npz`` (N images uint8 (N, C, H, W) and their labels),
``samples/NAME/ceiling.npz`` (the same architecture untrained: the metrics' ceiling row) and
``samples/NAME/grid.png``, and logs the grid to the model's MLflow run.
Same seed => same samples, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np

from components import layout, tracking
from components.config import PipelineConfig
from components.distributed.inference_jobs import merge_chunks, sample_job
from components.distributed.jobs import SampleJob
from components.distributed.runner import ClusterUnreachable, StorageError, run_job, run_name
from components.io import atomic_dir
from components.models import model_class
from components.report.grid import make_grid
from pipelines.common import MODEL, StageParser, parser, run_main


def arguments() -> StageParser:
    """The stage's command line."""
    p = parser(__doc__, model=True)
    p.path("--model-dir", layout.model_dir(MODEL), help="the trained model")
    p.path("--out", layout.samples_dir(MODEL), output=True, help="samples, ceiling images and the grid")
    return p


def sample_workers(cfg: PipelineConfig, name: str) -> int:
    """The sample job's workers: ``sample.num_workers``, else all of ``ray.num_workers`` for an
    iterative sampler and one for a single-pass generator (the same images either way)."""
    if cfg.sample.num_workers is not None:
        return cfg.sample.num_workers
    return cfg.ray.num_workers if model_class(cfg.train[name].family).iterative_sampler else 1


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    name, scfg = args.model, cfg.sample
    model_dir, out = Path(args.model_dir), Path(args.out)
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    run = tracking.ModelRun.attach(model_dir, uri)  # the train stage's run
    tracking.check_reachable(uri)

    job = SampleJob.from_config(cfg, name, model_dir)
    key = {"trained": hashlib.sha256(job.sets["samples"].checkpoint).hexdigest(), **scfg.model_dump()}
    start = time.perf_counter()
    ray_cfg = cfg.ray.model_copy(update={"num_workers": sample_workers(cfg, name)})
    result = run_job(sample_job, job, cfg=ray_cfg, plain=args.plain, name=run_name(f"sample-{name}", key))
    seconds = time.perf_counter() - start
    try:
        arrays = {set_name: merge_chunks(result / set_name) for set_name in job.sets}
    finally:
        shutil.rmtree(result, ignore_errors=True)
    images = arrays["samples"]["images"]
    grid = make_grid(images[: scfg.grid_size**2], rows=scfg.grid_size)  # labels i % K: a column per class
    with atomic_dir(out) as tmp:
        for set_name, data in arrays.items():
            np.savez(tmp / f"{set_name}.npz", images=data["images"], labels=data["labels"].astype(np.int64))
        from PIL import Image

        Image.fromarray(grid).save(tmp / "grid.png")
    total = scfg.num_samples + scfg.ceiling_samples
    run.log_image(grid, key="final_samples")
    run.log_metrics({"sample/seconds": seconds, "sample/images_per_s": total / seconds})
    run.set_tags({"sample_seed": scfg.seed})
    print(f"sample {name}: {total} images in {seconds:.1f} s ({total / seconds:.0f} img/s) -> {out}")


if __name__ == "__main__":
    run_main(arguments, main, ClusterUnreachable, StorageError, tracking.TrackingError, FileNotFoundError)
