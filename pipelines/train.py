"""``python -m pipelines.train --model NAME``: train one model as a Ray Train job (or ``--plain``).

Writes ``models/NAME/`` (checkpoint.pt, config.json, history.json, mlflow_run.json, loss.png)
and ``plots/train/NAME.csv``. Re-running after an interruption resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from components import layout, tracking
from components.config import PipelineConfig
from components.data.dataset import DataError, data_checksum, load_meta, spec_from_meta, split_rows
from components.distributed import runner
from components.distributed.datasets import prepared
from components.distributed.jobs import TrainJob, resolved_loading
from components.distributed.runner import StorageError, check_storage, run_job, run_name, storage_root
from components.distributed.train_jobs import HISTORY_FILE, train_job, worker_records
from components.io import atomic_dir, atomic_path, write_json
from components.report.curves import history_to_csv, plot_losses
from components.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, model_from_checkpoint
from pipelines.common import MODEL, StageParser, parser, run_main


def arguments() -> StageParser:
    """The stage's command line."""
    p = parser(__doc__, model=True)
    p.path("--data", layout.DATA, help="the fetch stage's folder")
    p.path("--out", layout.model_dir(MODEL), output=True, help="checkpoint, config, history, MLflow run id")
    p.path("--plot", layout.plot_file(MODEL), output=True, help="the loss curve for dvc plots")
    return p


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    name, mcfg = args.model, cfg.train[args.model]
    out = Path(args.out)
    if not args.plain:
        runner.check_cluster(cfg.ray)  # a Ray head that is not there: said in seconds, before anything

    meta, train = load_meta(args.data), prepared(args.data, "train")  # shards verified, read by the workers
    spec = spec_from_meta(meta)
    if spec.height != cfg.data.image_size:
        raise DataError(f"data is {spec.height}px but data.image_size is {cfg.data.image_size}: re-run fetch")
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    tracking.check_reachable(uri)  # before any work: no hour of training lost to a logging failure
    check_storage(storage_root(cfg.ray.storage_path))  # and none to unusable checkpoint storage

    workers, rows = 1 if args.plain else cfg.train_workers(name), split_rows(meta, "train")
    ray_cfg = cfg.ray.model_copy(update={"num_workers": cfg.train_workers(name)})
    loading = resolved_loading(cfg.data.loading, spec, rows, workers)
    job_key = {"name": name, "config": mcfg.model_dump(mode="json"), "data": data_checksum(args.data),
               "workers": ray_cfg.num_workers, "loading": loading.model_dump(mode="json")}
    ray_name = run_name(f"train-{name}", job_key)  # the run's identity: a config change starts afresh
    run = _model_run(cfg, name, mcfg, uri, job_key["data"], ray_name)
    job = TrainJob.from_config(cfg, name, spec, rows, workers=workers, uri=uri, run_id=run.run_id)
    with run:  # the model's run: FINISHED once its folder is written (and the marker gone), else FAILED
        result = run_job(train_job, job, cfg=ray_cfg, name=ray_name, plain=args.plain,
                         datasets={"train": train})
        try:
            with atomic_dir(out) as tmp:
                shutil.copy(result / CHECKPOINT_FILE, tmp / CHECKPOINT_FILE)
                history = json.loads((result / HISTORY_FILE).read_text())
                write_json(tmp / HISTORY_FILE, history)
                write_json(tmp / "workers.json", worker_records(result))
                write_json(tmp / "config.json", {"name": name, "config": mcfg.model_dump(mode="json"),
                                                 "data_spec": spec.to_dict(), "data_checksum": job_key["data"]})
                run.save(tmp)
                plot_losses(history, tmp / "loss.png", title=name)
                model = model_from_checkpoint(load_checkpoint(tmp / CHECKPOINT_FILE))
                run.log_artifacts(tmp / CHECKPOINT_FILE, [tmp / "loss.png"])
                run.log_generator(tmp / CHECKPOINT_FILE, meta["class_names"])
            with atomic_path(args.plot) as csv:
                csv.write_text(history_to_csv(history))
        finally:
            shutil.rmtree(result, ignore_errors=True)
    print(f"train {name}: {model.num_parameters():,} parameters, step {model.step}, run {run.run_id} -> {out}")


def _model_run(cfg, name, mcfg, uri, checksum, ray_name) -> tracking.ModelRun:
    """The model's MLflow run: a new one, or the one an interrupted attempt of this Ray run created."""
    from components.config import flatten

    tags = tracking.run_tags(family=mcfg.family, model_name=name, seed=mcfg.seed, data_checksum=checksum,
                             workers=cfg.train_workers(name), profile=cfg.profile, stage=f"train@{name}")
    ray_params = cfg.ray.model_copy(update={"num_workers": cfg.train_workers(name)}).model_dump(mode="json")
    params = flatten({"config": mcfg.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
                      "ray": ray_params})
    return tracking.ModelRun.start(uri, cfg.experiment_name, name, tags, params, marker=_run_marker(cfg, ray_name))


def _run_marker(cfg, ray_name: str) -> Path:
    """Local file remembering the MLflow run of an unfinished Ray run (beside local checkpoints)."""
    from components.distributed.runner import storage_root

    root = storage_root(cfg.ray.storage_path)
    return (Path(root) if "://" not in root else Path("ray_results")) / ".mlflow_runs" / ray_name


if __name__ == "__main__":
    run_main(arguments, main, runner.ClusterUnreachable, runner.JobFailed, StorageError, DataError, tracking.TrackingError, FileNotFoundError)
