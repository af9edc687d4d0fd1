"""``python -m benchmarks.stage_overhead``: where the train stage's per-step overhead (c/b) comes from.

The same training, five ways, each rate the median of the epochs after the first (the
worker's own epoch clock, as in ``train_speed``'s (c)):

- ``fit``: the project's loop in this process (``train_speed``'s (b));
- ``job, no Ray``: ``run_job(train_job, ..., plain=True)``: the stage's worker body and
  callbacks with MLflow tracking, in this process;
- ``Ray task``: ``fit`` inside a plain Ray task of the same CPUs (a Ray worker process, no Ray Train);
- ``Ray Train, no MLflow``: ``run_job`` on Ray Train without tracking;
- ``Ray Train + MLflow``: the full stage, as ``train_speed``'s (c).

Needs Ray and MLflow.

``--fixed-cost`` instead takes one Ray Train job with a trivial body apart (issue 30, item 3):
the driver's imports (in a fresh interpreter), then per job ``fit()`` -> the worker process
exists -> its body runs -> ``fit()`` returns, each the median of ``--repeats`` interleaved rounds,
for every setting in ``FIXED_COST_SETTINGS`` (Ray Train's documented environment switches) and
each of ``DATA_WAYS``: no data (a sample job), one dataset as the stages pass it (each rank its own
share, dealt by the driver), and the same rows split by Ray Train's ``streaming_split`` (the way
before 2026-12-06: one ``SplitCoordinator`` actor per job and dataset).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    allocator_args,
    common_args,
    emit_json,
    family_configs,
    machine,
    median,
    parse,
    print_table,
    with_settings,
)
from benchmarks.train_speed import CPU_STEPS, ProjectRunner, stage_speed, start_ray, stop_ray
from components.data.spec import DataSpec
from components.data.synthetic import make_synthetic

SPEC = DataSpec(channels=1, height=28, width=28, num_classes=10)
WAYS = ("fit", "job, no Ray", "Ray task", "Ray Train, no MLflow", "Ray Train + MLflow")


def fit_rates(family: str, steps: int, batch: int, epochs: int, quick: bool) -> list[float]:
    """Epoch rates (after the first) of ``fit`` in the calling process; also runs as a Ray task."""
    images, labels = make_synthetic(steps * batch, seed=0)
    cfg = with_settings(family_configs(quick, [family])[family], batch_size=batch, epochs=epochs)
    runner = ProjectRunner(cfg, SPEC, images, labels, torch.device("cpu"))
    rates = []
    for _ in range(epochs):
        n, seconds = runner.epoch()
        rates.append(n / seconds)
    return rates[1:]


def bench_family(family: str, steps: int, batch: int, epochs: int, threads: int, quick: bool,
                 folder: Path) -> dict[str, Any]:
    import ray

    images, labels = make_synthetic(steps * batch, seed=0)
    cfg = with_settings(family_configs(quick, [family])[family], batch_size=batch, epochs=epochs)
    device = torch.device("cpu")
    task = ray.remote(num_cpus=threads)(fit_rates)
    rates = {
        "fit": fit_rates(family, steps, batch, epochs, quick),
        "job, no Ray": stage_speed(cfg, SPEC, images, labels, device, threads, folder, plain=True)["rates"],
        "Ray task": ray.get(task.remote(family, steps, batch, epochs, quick)),
        "Ray Train, no MLflow": stage_speed(cfg, SPEC, images, labels, device, threads, folder, track=False)["rates"],
        "Ray Train + MLflow": stage_speed(cfg, SPEC, images, labels, device, threads, folder)["rates"],
    }
    base = median(rates["fit"])
    return {way: {"images_per_s": median(r), "rates": r, "vs_fit": median(r) / base} for way, r in rates.items()}


# --------------------------------------------------------------------------- a job's fixed cost
#: environment switches of Ray Train V2 (``ray/train/v2/_internal/constants.py``) tried against
#: its defaults: the preemption watcher is one more actor (a fresh Python process importing Ray)
#: started beside the workers; the metrics callbacks run in the controller and every worker.
FIXED_COST_SETTINGS: dict[str, dict[str, str]] = {
    "defaults": {},
    "no preemption watcher": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"},
    "no Train metrics": {"RAY_TRAIN_METRICS_ENABLED": "0"},
    "both off": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"},
}
#: how the trivial job gets its 256 rows
DATA_WAYS = ("no data", "one dataset", "one dataset, streaming_split")
DRIVER_IMPORTS = ("torch", "mlflow", "ray", "ray.train.torch", "components.distributed.runner")


def process_start_time() -> float:
    """This process's start as a ``time.time()`` value (``/proc``: 10 ms resolution)."""
    start_ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _probe_body(job: dict[str, Any], session: Any) -> None:
    """A trivial worker body: when its process started, when the body ran, and (with data) its rows."""
    from components.distributed.datasets import RayShardData

    entered = time.time()
    if job["data"] == "no data":
        data = None
    elif job["data"].endswith("streaming_split"):  # Ray Train's split of the whole dataset, under its own name
        data = RayShardData(session._train.get_dataset_shard("rows"))
    else:
        data = session.dataset("rows")
    rows = sum(len(batch["image"]) for batch in data.batches(64)) if data is not None else 0
    folder = Path(tempfile.mkdtemp(prefix="probe-"))
    (folder / f"rank{session.rank}.json").write_text(json.dumps(
        {"process_start": process_start_time(), "entered": entered, "rows": rows, "left": time.time()}))
    session.send_results(folder)


def driver_imports() -> dict[str, float]:
    """Seconds each of ``DRIVER_IMPORTS`` adds, imported in that order by a fresh interpreter."""
    code = ("import json, time, importlib; out = {}\n"
            f"for name in {DRIVER_IMPORTS!r}:\n"
            "    t = time.perf_counter(); importlib.import_module(name); out[name] = time.perf_counter() - t\n"
            "print(json.dumps(out))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fixed_cost(repeats: int, workers: int, settings: list[str]) -> dict[str, Any]:
    """Per setting and data/no data: the median seconds of each piece of a trivial job."""
    from components.config import RayConfig
    from components.distributed import runner
    from components.distributed.datasets import ArraySource
    from components.distributed.runner import run_job

    cfg = RayConfig(num_workers=workers, storage_path=tempfile.mkdtemp(prefix="fixed-cost-"))
    images = np.zeros((256, 1, 28, 28), dtype=np.uint8)
    ours = runner.ray_datasets
    pieces: dict[str, dict[str, list[float]]] = {}
    for round_index in range(1 + repeats):  # round 0 warms the head (its first job pays extra)
        for setting_index, setting in enumerate(settings):
            env = FIXED_COST_SETTINGS[setting]
            for data_index, data in enumerate(DATA_WAYS):
                key = f"{setting}, {data}"
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                runner.ray_datasets = _streaming_split_datasets if data.endswith("streaming_split") else ours
                try:
                    start = time.time()
                    out = run_job(_probe_body, {"data": data}, cfg=cfg, name=f"fixed-cost-{round_index}-{setting_index}-{data_index}",
                                  datasets=None if data == "no data" else {"rows": ArraySource(images)})
                    end = time.time()
                finally:
                    runner.ray_datasets = ours
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                ranks = [json.loads(f.read_text()) for f in out.glob("rank*.json")]
                shutil.rmtree(out, ignore_errors=True)
                if round_index == 0:
                    pieces.setdefault(key, {})
                    continue
                row = pieces.setdefault(key, {})
                for name, value in {
                    "fit -> worker process": min(r["process_start"] for r in ranks) - start,
                    "worker process -> body": max(r["entered"] - r["process_start"] for r in ranks),
                    "body": max(r["left"] - r["entered"] for r in ranks),
                    "body -> fit returns": end - max(r["left"] for r in ranks),
                    "job": end - start,
                }.items():
                    row.setdefault(name, []).append(value)
        print(f"round {round_index}: done", flush=True)
    shutil.rmtree(cfg.storage_path, ignore_errors=True)
    return {key: {name: median(values) for name, values in row.items()} for key, row in pieces.items()}


def _streaming_split_datasets(sources: dict[str, Any], world_size: int) -> tuple[dict[str, Any], Any]:
    """The way before: one dataset per source, split over the ranks by Ray Train (``streaming_split``)."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    whole = {name: source.rank_datasets(1)[0] for name, source in sources.items()}
    return whole, DataConfig(datasets_to_split="all", execution_options=ExecutionOptions(preserve_order=True))


def job_timeline(workers: int) -> list[tuple[float, float, str]]:
    """One more trivial job's Ray timeline: ``(start after fit(), seconds, what)`` of each actor
    method and Train execution step (helper actors' creation, the workers' context, the process
    group, the train function), and when each worker process started and its body ran."""
    import ray

    from components.config import RayConfig
    from components.distributed.runner import run_job

    cfg = RayConfig(num_workers=workers, storage_path=tempfile.mkdtemp(prefix="fixed-cost-"))
    start = time.time()
    out = run_job(_probe_body, {"data": "no data"}, cfg=cfg, name="fixed-cost-timeline")
    end = time.time()
    rows = [(e["ts"] / 1e6 - start, e["dur"] / 1e6, e["cat"].removeprefix("task::")) for e in ray.timeline()
            if e.get("ph") == "X" and str(e.get("cat", "")).startswith("task::") and e["ts"] / 1e6 >= start]
    for rank_file in sorted(out.glob("rank*.json")):
        record = json.loads(rank_file.read_text())
        rows += [(record["process_start"] - start, 0.0, f"{rank_file.stem}: worker process starts"),
                 (record["entered"] - start, 0.0, f"{rank_file.stem}: the body runs")]
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cfg.storage_path, ignore_errors=True)
    return sorted(rows) + [(end - start, 0.0, "fit() returns")]


def main_fixed_cost(args: Any) -> None:
    import ray

    result: dict[str, Any] = {"benchmark": "stage_overhead --fixed-cost", **machine(), "repeats": args.repeats or 5,
                              "workers": args.workers, "driver_imports": driver_imports()}
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers import components only
    ray_temp, _ = start_ray(1, torch.device("cpu"))
    try:
        ray.get(ray.remote(lambda: 0).remote())
        result["jobs"] = fixed_cost(args.repeats or 5, args.workers, args.settings.split(","))
        result["timeline"] = job_timeline(args.workers)
    finally:
        stop_ray(ray_temp)
    print(f"\nfixed cost of a Ray Train job on {result['cpu']}, {args.workers} worker(s), load {result['load_avg_1m']} "
          f"at the start; median of {result['repeats']} rounds, seconds")
    print("driver imports (fresh interpreter): "
          + ", ".join(f"{k} {v:.2f}" for k, v in result["driver_imports"].items()))
    names = ["fit -> worker process", "worker process -> body", "body", "body -> fit returns", "job"]
    print_table(["setting", *names], [(k, *(f"{row[n]:.2f}" for n in names)) for k, row in result["jobs"].items()])
    print("\none more job (defaults, no data), Ray's timeline: seconds after fit() is called")
    print_table(["at s", "for s", "what"], [(f"{at:.2f}", f"{dur:.2f}" if dur else "", what)
                                             for at, dur, what in result["timeline"]])
    emit_json(result, args.json)


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--fixed-cost", action="store_true", help="take a trivial job's fixed cost apart instead")
    p.add_argument("--workers", type=int, default=2, help="--fixed-cost: workers per job (the stages' default 2)")
    p.add_argument("--settings", default=",".join(FIXED_COST_SETTINGS),
                   help=f"--fixed-cost: comma-separated, of {', '.join(FIXED_COST_SETTINGS)}")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (quick: 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs after the warm-up one (default 5)")
    allocator_args(p)
    args, _, threads, families = parse(p, cpu_only=True)
    if args.fixed_cost:
        main_fixed_cost(args)
        return
    batch = args.batch_size or (32 if args.quick else 128)
    epochs = 1 + (args.repeats or (2 if args.quick else 5))
    result: dict[str, Any] = {"benchmark": "stage_overhead", **machine(), "device": "cpu", "batch_size": batch,
                              "threads": threads, "repeats": epochs - 1, "families": {}}
    folder = Path(tempfile.mkdtemp(prefix="stage-overhead-"))
    ray_temp, result["ray_worker_threads"] = start_ray(threads, torch.device("cpu"))
    try:
        for family in families:
            steps = 3 if args.quick else CPU_STEPS[family]
            result["families"][family] = bench_family(family, steps, batch, epochs, threads, args.quick, folder)
            print(family, {w: round(r["vs_fit"], 3) for w, r in result["families"][family].items()}, flush=True)
    finally:
        stop_ray(ray_temp)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nstage_overhead on cpu ({result['cpu']}), batch {batch}, {threads} thread(s), torch {result['torch']}, "
          f"load {result['load_avg_1m']}: images/s (ratio to fit)")
    print_table(["family", *WAYS], [(f, *(f"{r[w]['images_per_s']:.0f} ({r[w]['vs_fit']:.2f})" for w in WAYS))
                                    for f, r in result["families"].items()])
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
