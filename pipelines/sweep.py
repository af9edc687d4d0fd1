"""``python -m pipelines.sweep --model NAME``: a hyper-parameter sweep of one model with Ray Tune.

Reads the search space from ``sweeps/NAME.yaml`` (``components.config.SweepConfig``). Each trial
trains the model as the train stage does, for the sweep's ``steps``, and is scored as the evaluate
stage scores (needs the classifier stage's ``models/classifier``). Writes the best trial's values
as a params overlay, ``sweeps/NAME-best.yaml``, and prints the ``dvc exp run`` line that trains
it. Not a DVC stage: a sweep informs ``params.yaml``; it is not a step of the pipeline. Re-running
an interrupted sweep resumes it without repeating its finished trials.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from components import layout, tracking
from components.config import ConfigError, PipelineConfig, load_sweep
from components.data.dataset import DataError
from components.distributed import runner
from components.io import atomic_path
from components.sweep.space import best_overlay, dvc_command, overlay_text
from components.sweep.tuning import SweepError, plot_trials, run_sweep
from pipelines.common import EXIT_CONFIG, MODEL, StageParser, parser, run_main


def arguments() -> StageParser:
    """The command line."""
    p = parser(__doc__, model=True)
    p.path("--sweep", layout.sweep_file(MODEL), help="the search space and budget")
    p.path("--data", layout.DATA, help="the fetch stage's folder")
    p.path("--classifier", layout.CLASSIFIER_DIR, help="the classifier's checkpoint and reference features")
    p.path("--out", layout.best_overlay_file(MODEL), output=True, help="the best configuration, a params overlay")
    return p


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    if args.plain:
        print("error: a sweep runs on Ray (Tune); --plain is not supported", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        sweep = load_sweep(args.sweep, args.model, cfg.train[args.model])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    runner.check_cluster(cfg.ray)  # before any work: a Ray head that is not there is said in seconds
    tracking.check_reachable(tracking.resolve_tracking_uri(cfg.mlflow))
    runner.check_storage(runner.storage_root(cfg.ray.storage_path))

    outcome = run_sweep(cfg, args.model, sweep, data_dir=args.data, classifier_dir=args.classifier)
    best = outcome.best
    overlay = best_overlay(args.model, best.values)
    header = [(f"best of sweep {outcome.name} (MLflow run {outcome.parent_run_id}): trial {best.trial_id}, "
               f"{sweep.objective} {best.scores['objective']:.4g} after {sweep.steps} steps"),
              f"train it: {dvc_command(overlay)}"]
    with atomic_path(args.out) as tmp:
        tmp.write_text(overlay_text(overlay, header))
    uri = tracking.resolve_tracking_uri(cfg.mlflow)
    with tempfile.TemporaryDirectory() as folder:
        plot = plot_trials(outcome, sweep.objective, Path(folder) / "trials.png")
        tracking.log_files(uri, outcome.parent_run_id, [Path(args.out), plot])

    for trial in outcome.trials:
        score = f"{sweep.objective} {trial.scores['objective']:.4g}" if trial.scores else trial.error
        print(f"  {trial.trial_id} {trial.status:8} {trial.values}: {score}")
    failed = sum(t.status == "FAILED" for t in outcome.trials)
    print(f"sweep {args.model}: {len(outcome.trials)} trials ({failed} failed), best {best.trial_id} "
          f"{best.values} -> {args.out}\ntrain it: {dvc_command(overlay)}")


if __name__ == "__main__":
    run_main(arguments, main, runner.ClusterUnreachable, runner.JobFailed, runner.StorageError, DataError,
             tracking.TrackingError, SweepError, FileNotFoundError)
