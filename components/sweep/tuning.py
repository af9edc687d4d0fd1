"""Run a sweep with Ray Tune, resume it after an interruption, and record it in MLflow.

One Tune experiment per sweep, named after what it sweeps (``runner.run_name``: the model's
section, the sweep file, the data, the worker count), in ``ray.storage_path``. Running the same
sweep again restores it (``Tuner.restore``): finished and failed trials are kept as they are,
unfinished ones start again, and their Train runs resume from their last checkpoints.

MLflow: one parent run per sweep (``sweep-<model>``, re-attached on resume) in the experiment
``<experiment>-sweeps``, one child run per trial (tag ``mlflow.parentRunId``) with its params,
per-step losses, scores and status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components import layout, tracking
from components.config import OBJECTIVES, PipelineConfig, SweepConfig, flatten
from components.data.dataset import data_checksum, load_meta, load_split, spec_from_meta, split_rows
from components.distributed import console, runner
from components.distributed.datasets import prepared
from components.distributed.jobs import resolved_loading
from components.sweep.trial import OBJECTIVE, SharedSource, SweepRecords, SweepSetup, plain, run_trial
from components.training.checkpoint import CHECKPOINT_FILE

#: how often Tune saves the experiment's state (its default is 10 s or more): a driver killed
#: loses at most this much bookkeeping (a trial FINISHED meanwhile is still not trained again:
#: ``trial.run_trial`` finds its MLflow run)
TUNE_STATE_PERIOD_S = "2"
TRIAL_DRIVER_MEMORY = 256 << 20  # bytes: a trial's scoring holds its model, N images and their features


class SweepError(RuntimeError):
    """A sweep that cannot run (too few reference images for its N) or whose every trial failed."""


@dataclass(frozen=True)
class TrialOutcome:
    """One trial at the sweep's end: its values, status (FINISHED or FAILED) and scores."""

    trial_id: str
    values: dict[str, Any]
    status: str
    scores: dict[str, float]
    error: str = ""


@dataclass(frozen=True)
class SweepOutcome:
    """A finished sweep: its name, parent run, every trial, and the best one by the objective."""

    name: str
    parent_run_id: str
    trials: list[TrialOutcome]
    best: TrialOutcome
    resumed: bool


def sweep_name(cfg: PipelineConfig, model: str, sweep: SweepConfig, checksum: str) -> str:
    """The sweep's Tune experiment name: changes with anything that changes its trials."""
    key = {"model": model, "config": cfg.train[model].model_dump(mode="json"), "sweep": sweep.model_dump(mode="json"),
           "data": checksum, "workers": cfg.train_workers(model), "evaluate": cfg.evaluate.model_dump(mode="json")}
    return runner.run_name(f"sweep-{model}", key)


def run_sweep(cfg: PipelineConfig, model: str, sweep: SweepConfig, *, data_dir: str | Path,
              classifier_dir: str | Path) -> SweepOutcome:
    """Run (or resume) the sweep of ``model`` and return its trials and best one.

    Args:
        cfg: the validated pipeline config (``ray`` settings apply to each trial's job, with the
            model's own ``num_workers`` where it has one).
        model: a section of ``cfg.train``.
        sweep: the validated sweep file.
        data_dir: the fetch stage's folder.
        classifier_dir: the classifier stage's folder (checkpoint and reference features).

    Raises:
        SweepError: too few reference images for ``num_samples``, or every trial failed (the
            parent run then ends FAILED).
    """
    cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"num_workers": cfg.train_workers(model)})})
    meta, checksum = load_meta(data_dir), data_checksum(data_dir)
    reference = np.load(Path(classifier_dir) / layout.REFERENCE_FILE)["test_features"]
    if len(reference) < sweep.num_samples:
        raise SweepError(f"num_samples {sweep.num_samples}: the classifier's reference set holds only "
                         f"{len(reference)} test images (evaluate.num_samples when it ran)")
    name = sweep_name(cfg, model, sweep, checksum)
    storage = runner.storage_root(cfg.ray.storage_path)
    parent, records = _parent_run(cfg, model, sweep, name, checksum)
    with parent:  # FINISHED once the sweep has a best trial, else FAILED (KILLED on Ctrl-C)
        runner.connect(cfg.ray)
        log = console.route_worker_output(Path(layout.LOGS) / f"{name}.log")
        spec, rows = spec_from_meta(meta), split_rows(meta, "train")
        train = prepared(data_dir, "train").rank_datasets(cfg.ray.num_workers)  # into the object store once
        setup = SweepSetup(
            name=name, model=model, section=cfg.train[model], sweep=sweep,
            ray=cfg.ray.model_copy(update={"storage_path": storage}), evaluate=cfg.evaluate, data=spec, rows=rows,
            loading=resolved_loading(cfg.data.loading, spec, rows, cfg.ray.num_workers), grid_seed=cfg.sample.seed,
            records=records, train=SharedSource(train),
            classifier=(Path(classifier_dir) / CHECKPOINT_FILE).read_bytes(),
            reference=reference[: sweep.num_samples], held_out=load_split(data_dir, "test"))
        tuner, resumed = _tuner(setup, storage)
        print(f"sweep {model}: {name}, {sweep.trials} draw(s), at most {sweep.max_concurrent} at once, "
              f"{sweep.steps} steps each{' (resumed)' if resumed else ''}; Ray's output -> {log}", flush=True)
        outcomes = [_outcome(result) for result in tuner.fit()]
        ok = [t for t in outcomes if t.status == "FINISHED"]
        summary = {"sweep/trials": len(outcomes), "sweep/trials_finished": len(ok),
                   "sweep/trials_failed": len(outcomes) - len(ok)}
        parent.log_metrics(summary)
        if not ok:
            raise SweepError(f"sweep {name}: all {len(outcomes)} trials failed; first error: {outcomes[0].error}")
        sign = 1 if OBJECTIVES[sweep.objective] == "min" else -1
        best = min(ok, key=lambda t: sign * t.scores[OBJECTIVE])
        parent.log_metrics({"sweep/best_objective": best.scores[OBJECTIVE],
                            **{f"best/{k}": v for k, v in best.scores.items() if k != OBJECTIVE}})
        parent.set_tags({"sweep.best_trial": best.trial_id, **{f"best.{k}": v for k, v in best.values.items()}})
    return SweepOutcome(name, parent.run_id, outcomes, best, resumed)


def _parent_run(cfg: PipelineConfig, model: str, sweep: SweepConfig, name: str,
                checksum: str) -> tuple[tracking.ModelRun, SweepRecords]:
    """The sweep's parent run (re-attached when the sweep resumes, like the train stage's run) and
    where its trials record themselves."""
    uri, section = tracking.resolve_tracking_uri(cfg.mlflow), cfg.train[model]
    experiment = f"{cfg.experiment_name}-sweeps"  # apart from the models' runs, which the report compares
    tags = tracking.run_tags(family=section.family, model_name=model, seed=section.seed, data_checksum=checksum,
                             workers=cfg.ray.num_workers, profile=cfg.profile, stage=f"sweep@{model}")
    params = flatten({"sweep": sweep.model_dump(mode="json"), "config": section.model_dump(mode="json"),
                      "ray": cfg.ray.model_dump(mode="json")})
    storage = runner.storage_root(cfg.ray.storage_path)
    # beside local checkpoints, as the train stage keeps its runs' markers; a local folder for remote storage
    marker = (Path(storage) if "://" not in storage else Path("ray_results")) / ".mlflow_runs" / name
    parent = tracking.ModelRun.start(uri, experiment, f"sweep-{model}", {**tags, "sweep.name": name}, params,
                                     marker=marker)
    return parent, SweepRecords(uri, experiment, parent.run_id, tags)


def _tuner(setup: SweepSetup, storage: str) -> tuple[Any, bool]:
    """A new Tuner for the sweep, or the interrupted one restored; and whether it was restored."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from components.sweep.space import tune_space

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", TUNE_STATE_PERIOD_S)
    # No CPU for the trial's driver function, which mostly waits: its Train workers hold the trial's
    # CPUs or GPUs (1 CPU each would make 2 trials of 1 worker need 4 CPUs). Tune refuses an empty
    # request, so it asks for the memory its scoring uses.
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY})
    path = f"{storage.rstrip('/')}/{setup.name}"
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False), True
    sweep = setup.sweep
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(sweep),
        # the generator itself limits concurrency: Tune ignores max_concurrent_trials beside a generator
        tune_config=tune.TuneConfig(metric=OBJECTIVE, mode=OBJECTIVES[sweep.objective], num_samples=sweep.trials,
                                    search_alg=BasicVariantGenerator(max_concurrent=sweep.max_concurrent,
                                                                     random_state=sweep.seed)),
        # a trial's workers are retried by Train (ray.max_failures); a trial that still fails stays failed
        run_config=tune.RunConfig(name=setup.name, storage_path=storage, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    return tuner, False


def _outcome(result: Any) -> TrialOutcome:
    """A Tune ``Result`` as a ``TrialOutcome``."""
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or Path(result.path).name
    values = plain({k: v for k, v in (result.config or {}).items()})
    if result.error is not None or OBJECTIVE not in metrics:
        reason = str(result.error).strip().splitlines()[-1] if result.error is not None else "no scores reported"
        return TrialOutcome(trial_id, values, "FAILED", {}, reason)
    scores = {k: float(v) for k, v in metrics.items() if k in (*OBJECTIVES, OBJECTIVE)}
    return TrialOutcome(trial_id, values, "FINISHED", scores)


def plot_trials(outcome: SweepOutcome, objective: str, path: str | Path) -> Path:
    """One panel per swept key: each finished trial's objective against its value (log x for a
    positive float key spanning more than a decade), the best trial ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [t for t in outcome.trials if t.status == "FINISHED"]
    keys = sorted(outcome.best.values)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [t.values[key] for t in ok]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        xs = xs if numeric else [str(x) for x in xs]
        ax.scatter(xs, [t.scores[OBJECTIVE] for t in ok], s=18)
        best_x = outcome.best.values[key] if numeric else str(outcome.best.values[key])
        ax.scatter([best_x], [outcome.best.scores[OBJECTIVE]], s=90, facecolors="none", edgecolors="red")
        if numeric and min(xs) > 0 and max(xs) > 10 * min(xs):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
    fig.suptitle(f"{outcome.name}: {len(ok)} finished trial(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
