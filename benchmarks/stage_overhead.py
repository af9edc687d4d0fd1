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
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

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


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (quick: 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs after the warm-up one (default 5)")
    allocator_args(p)
    args, _, threads, families = parse(p, cpu_only=True)
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
