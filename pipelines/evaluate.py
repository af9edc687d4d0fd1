"""``python -m pipelines.evaluate --model NAME``: score a model's samples against the real test split.

Features of the generated and the untrained-ceiling images are extracted on Ray workers with
the classifier; FID/KID/precision/recall/density/coverage, conditional accuracy (conditional
models) and the family's held-out scores (VAE ELBO, DDPM noise loss) go to ``metrics/NAME.json``
and to the model's MLflow run as ``eval/*``, beside the floor and ceiling rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from components import layout, tracking
from components.config import PipelineConfig
from components.data.dataset import DataError, load_split
from components.distributed.datasets import ArraySource
from components.distributed.inference_jobs import features_job, merge_chunks, set_source
from components.distributed.jobs import FeaturesJob
from components.distributed.runner import ClusterUnreachable, StorageError, run_job, run_name
from components.io import write_json
from components.metrics.conditional import conditional_accuracy
from components.metrics.held_out import held_out_scores
from components.metrics.suite import sample_metrics
from components.training.checkpoint import CHECKPOINT_FILE, model_from_checkpoint
from pipelines.common import MODEL, StageParser, parser, run_main


def arguments() -> StageParser:
    """The stage's command line."""
    p = parser(__doc__, model=True)
    p.path("--data", layout.DATA, help="the fetch stage's folder (held-out scores)")
    p.path("--classifier", layout.CLASSIFIER_DIR, help="the classifier's checkpoint and reference features")
    p.path("--floor", layout.CLASSIFIER_METRICS, help="the classifier's metrics (the floor row)")
    p.path("--model-dir", layout.model_dir(MODEL), help="the trained model")
    p.path("--samples", layout.samples_dir(MODEL), help="the model's samples")
    p.path("--out", layout.metrics_file(MODEL), output=True, help="the model's scores")
    return p


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    name, ecfg = args.model, cfg.evaluate
    model_dir, samples_dir, classifier_dir = Path(args.model_dir), Path(args.samples), Path(args.classifier)
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    run = tracking.ModelRun.attach(model_dir, uri)  # the train stage's run
    test = load_split(args.data, "test")  # verified against meta.json before any work
    tracking.check_reachable(uri)

    reference = np.load(classifier_dir / layout.REFERENCE_FILE)
    generated = np.load(samples_dir / "samples.npz")
    images, labels = generated["images"][: ecfg.num_samples], generated["labels"][: ecfg.num_samples]
    sets = {"samples": images, "ceiling": np.load(samples_dir / "ceiling.npz")["images"]}
    job = FeaturesJob.from_config(cfg, classifier_dir, tuple(sets))
    key = {"name": name, "samples": hashlib.sha256(images.tobytes()).hexdigest(),
           "ceiling": hashlib.sha256(sets["ceiling"].tobytes()).hexdigest()}
    ray_cfg = cfg.ray.model_copy(update={"num_workers": ecfg.num_workers or cfg.ray.num_workers})
    result = run_job(features_job, job, cfg=ray_cfg, plain=args.plain, name=run_name(f"features-{name}", key),
                     datasets={set_source(k): ArraySource(v) for k, v in sets.items()})
    features = {set_name: merge_chunks(result / set_name) for set_name in sets}
    shutil.rmtree(result, ignore_errors=True)

    real = reference["test_features"]
    model = model_from_checkpoint(model_dir / CHECKPOINT_FILE)
    scores = sample_metrics(real, features["samples"]["features"], ecfg)
    if model.is_conditional:
        scores["cond_acc"] = conditional_accuracy(features["samples"]["predicted"], labels)
    scores.update(held_out_scores(model, test, ecfg))
    ceiling = sample_metrics(real, features["ceiling"]["features"], ecfg, full=False)
    floor = json.loads(Path(args.floor).read_text())
    out = {"model": name, "family": model.family, "kind": model.kind,
           "num_samples": len(images), "ceiling_samples": len(sets["ceiling"]),
           "extractor_checksum": floor.get("extractor_checksum"), "parameters": model.num_parameters(),
           "train_steps": model.step, **scores,
           **{f"ceiling_{k}": v for k, v in ceiling.items()},
           **{f"floor_{k}": v for k, v in floor.get("floor", {}).items()}}
    run.log_metrics({f"eval/{k}": v for k, v in out.items()})
    run.set_tags({"extractor_checksum": out["extractor_checksum"]})
    registered = run.register(cfg.mlflow.experiment_prefix, name, out)
    out.update(registered_model=registered.name, model_version=registered.version)
    write_json(args.out, out)
    print(f"evaluate {name}: FID {scores['fid']:.2f} (ceiling {ceiling['fid']:.1f}, "
          f"floor {out.get('floor_fid', float('nan')):.2f}), precision {scores['precision']:.3f}, "
          f"recall {scores['recall']:.3f}; registered {registered.uri} (champion: version {registered.champion})")


if __name__ == "__main__":
    run_main(arguments, main, ClusterUnreachable, StorageError, DataError, tracking.TrackingError, FileNotFoundError)
