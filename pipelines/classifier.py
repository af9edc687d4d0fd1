"""``python -m pipelines.classifier``: train the in-domain CNN whose embedding all metrics use.

One Ray Train job trains it like any model and then, on the same workers, extracts the real
reference features (test split, and a same-size random draw from the training split),
giving the *data floor* row (real train vs real test). Writes ``models/classifier/`` (checkpoint.pt,
reference.npz, mlflow_run.json) and ``metrics/classifier.json``.
"""

from __future__ import annotations

import argparse
import shutil

import numpy as np

from components import layout, tracking
from components.config import PipelineConfig, flatten
from components.data.dataset import DataError, data_checksum, load_meta, load_split, spec_from_meta, split_rows
from components.distributed.datasets import ArraySource, prepared
from components.distributed.inference_jobs import merge_chunks, set_source
from components.distributed.jobs import ClassifierJob
from components.distributed.runner import run_job, run_name
from components.distributed.train_jobs import classifier_job
from components.io import atomic_dir, write_json
from components.metrics.held_out import reference_sets
from components.metrics.suite import sample_metrics
from components.training.checkpoint import CHECKPOINT_FILE, model_from_checkpoint
from pipelines.common import StageParser, parser, run_main


def arguments() -> StageParser:
    """The stage's command line."""
    p = parser(__doc__, plain=True)
    p.path("--data", layout.DATA, help="the fetch stage's folder")
    p.path("--out", layout.CLASSIFIER_DIR, output=True, help="checkpoint, reference features, MLflow run id")
    p.path("--metrics", layout.CLASSIFIER_METRICS, output=True, help="test accuracy and the data floor")
    return p


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    ccfg, n = cfg.classifier, cfg.evaluate.num_samples
    meta, train, test = load_meta(args.data), load_split(args.data, "train"), load_split(args.data, "test")
    spec = spec_from_meta(meta)
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)
    checksum = data_checksum(args.data)
    run = tracking.ModelRun.start(
        uri, cfg.experiment_name, "classifier",
        tracking.run_tags(family="classifier", model_name="classifier", seed=ccfg.seed, data_checksum=checksum,
                          workers=cfg.ray.num_workers, profile=cfg.profile, stage="classifier"),
        flatten({"config": ccfg.model_dump(mode="json")}))

    with run:  # the classifier's own run: FINISHED, or FAILED
        sets = reference_sets(train, test, n, cfg.evaluate.seed)  # the real images every model is compared with
        test_n = len(sets["test"])

        workers, rows = 1 if args.plain else cfg.ray.num_workers, split_rows(meta, "train")
        job = ClassifierJob.from_config(cfg, spec, rows, workers=workers, uri=uri, run_id=run.run_id,
                                      image_sets=tuple(sets))
        key = {"name": "classifier", "config": ccfg.model_dump(mode="json"), "data": checksum, "n": test_n,
               "loading": job.train.loading.model_dump(mode="json")}
        datasets = {"train": prepared(args.data, "train"), **{set_source(k): ArraySource(v) for k, v in sets.items()}}
        result = run_job(classifier_job, job, cfg=cfg.ray, name=run_name("classifier", key), plain=args.plain,
                         datasets=datasets)
        try:
            checkpoint = (result / CHECKPOINT_FILE).read_bytes()
            features = {name: merge_chunks(result / name) for name in sets}
        finally:
            shutil.rmtree(result, ignore_errors=True)
        classifier = model_from_checkpoint(checkpoint)
        accuracy = _accuracy(classifier, test.images, test.labels)
        if accuracy < ccfg.min_test_accuracy:
            raise RuntimeError(f"classifier test accuracy {accuracy:.4f} < classifier.min_test_accuracy "
                               f"{ccfg.min_test_accuracy}: train it longer (classifier.epochs) before trusting metrics")
        floor = sample_metrics(features["test"]["features"], features["train"]["features"], cfg.evaluate)

        identity = classifier.checksum()
        with atomic_dir(args.out) as tmp:
            (tmp / CHECKPOINT_FILE).write_bytes(checkpoint)
            np.savez(tmp / layout.REFERENCE_FILE, test_features=features["test"]["features"],
                     test_labels=test.labels[:test_n], train_features=features["train"]["features"])
            run.save(tmp)
        summary = {"test_accuracy": accuracy, "extractor_checksum": identity, "num_samples": test_n,
                   "data": meta["name"], "floor": floor}
        write_json(args.metrics, summary)
        run.log_metrics({"eval/test_accuracy": accuracy, **{f"eval/floor_{k}": v for k, v in floor.items()}})
        run.set_tags({"extractor_checksum": identity})
        print(f"classifier: test accuracy {accuracy:.4f}, floor FID {floor['fid']:.3f}, extractor {identity}")


def _accuracy(classifier, images: np.ndarray, labels: np.ndarray) -> float:
    from components.metrics.conditional import classifier_accuracy

    return classifier_accuracy(classifier.feature_extractor().classify, images, labels)


if __name__ == "__main__":
    run_main(arguments, main, DataError, tracking.TrackingError, FileNotFoundError, RuntimeError)
