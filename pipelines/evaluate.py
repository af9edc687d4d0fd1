"""``python -m pipelines.evaluate --model NAME``: score a model's samples against the real test split.

Features of the generated and the untrained-ceiling images are extracted on Ray workers with
the evaluator; FID/KID/precision/recall/density/coverage, conditional accuracy (conditional
models) and the family's held-out scores (VAE ELBO, DDPM noise loss) go to ``metrics/NAME.json``
and to the model's MLflow run as ``eval/*``, beside the floor and ceiling rows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from components import tracking
from components.data.dataset import load_split
from components.distributed.jobs import features_job, merge_chunks
from components.distributed.runner import ClusterUnreachable, StorageError, run_job, run_name
from components.io import write_json
from components.metrics.conditional import conditional_accuracy
from components.metrics.suite import sample_metrics
from components.training.checkpoint import CHECKPOINT_FILE, model_from_checkpoint
from pipelines.common import load_or_exit, parser, run_main

HELD_OUT_IMAGES = 2000  # test images for the family's held-out scores (cheap, fixed for comparability)


def main() -> None:
    p = parser(__doc__, model=True)
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--samples-dir", default="samples")
    p.add_argument("--out", default=None, help="default: metrics/NAME.json")
    args = p.parse_args()
    cfg = load_or_exit(args)
    name, ecfg = args.model, cfg.evaluate
    models, samples_dir = Path(args.models_dir), Path(args.samples_dir) / args.model
    run = tracking.read_run_file(models / name)
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)

    evaluator_blob = (models / "evaluator" / CHECKPOINT_FILE).read_bytes()
    reference = np.load(models / "evaluator" / "reference.npz")
    generated = np.load(samples_dir / "samples.npz")
    images, labels = generated["images"][: ecfg.num_samples], generated["labels"][: ecfg.num_samples]
    sets = {"samples": images, "ceiling": np.load(samples_dir / "ceiling.npz")["images"]}
    job = {"checkpoint": evaluator_blob, "image_sets": sets, "batch_size": ecfg.batch_size}
    key = {"name": name, "samples": hashlib.sha256(images.tobytes()).hexdigest(),
           "ceiling": hashlib.sha256(sets["ceiling"].tobytes()).hexdigest()}
    result = run_job(features_job, job, cfg=cfg.ray, plain=args.plain, name=run_name(f"features-{name}", key))
    features = {set_name: merge_chunks(result / set_name) for set_name in sets}
    shutil.rmtree(result, ignore_errors=True)

    real = reference["test_features"]
    model = model_from_checkpoint(models / name / CHECKPOINT_FILE)
    scores = sample_metrics(real, features["samples"]["features"], ecfg)
    if model.is_conditional:
        scores["cond_acc"] = conditional_accuracy(features["samples"]["predicted"], labels)
    scores.update(_held_out(model, args.data, ecfg.seed))
    ceiling = sample_metrics(real, features["ceiling"]["features"], ecfg, full=False)
    floor = _read_json(Path("metrics/evaluator.json"))
    out = {"model": name, "family": model.family, "kind": tracking.FAMILY_KIND[model.family],
           "num_samples": len(images), "ceiling_samples": len(sets["ceiling"]),
           "extractor_checksum": floor.get("extractor_checksum"), "parameters": model.num_parameters(),
           "train_steps": model.step, **scores,
           **{f"ceiling_{k}": v for k, v in ceiling.items()},
           **{f"floor_{k}": v for k, v in floor.get("floor", {}).items()}}
    write_json(args.out or f"metrics/{name}.json", out)
    c = tracking.client(uri)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c.log_batch(run["run_id"], metrics=[Metric(f"eval/{k}", float(v), now, 0) for k, v in out.items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)])
    c.set_tag(run["run_id"], "extractor_checksum", str(out["extractor_checksum"]))
    print(f"evaluate {name}: FID {scores['fid']:.2f} (ceiling {ceiling['fid']:.1f}, "
          f"floor {out.get('floor_fid', float('nan')):.2f}), precision {scores['precision']:.3f}, "
          f"recall {scores['recall']:.3f}")


def _held_out(model, data_dir: str, seed: int) -> dict[str, float]:
    """The family's own scores on real test images (empty for GANs)."""
    test = load_split(data_dir, "test")
    images = torch.as_tensor(test.images[:HELD_OUT_IMAGES]).float().div(127.5).sub(1.0)
    labels = torch.as_tensor(test.labels[:HELD_OUT_IMAGES])
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    batches = 0
    with torch.no_grad():
        for start in range(0, len(images), 500):
            for k, v in model.held_out_metrics(images[start : start + 500], labels[start : start + 500], gen).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            batches += 1
    return {k: v / batches for k, v in sums.items()}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    run_main(main, ClusterUnreachable, StorageError, tracking.TrackingError, FileNotFoundError)
