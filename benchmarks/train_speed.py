"""``python -m benchmarks.train_speed``: training images/s of every family, three ways.

(a) a textbook plain-PyTorch loop over the same networks (``benchmarks/textbook.py``);
(b) the project's loop (``components.training.loop.fit`` over a device-resident
    ``TensorLoader``) with the best of the runtime settings tried on this device;
(c) the train stage's machinery: ``run_job(train_job, ...)`` as a Ray Train job with one
    worker and MLflow logging (sqlite store, default interval), skipped when Ray or MLflow
    is not installed.

Each variant trains ``1 + repeats`` epochs of ``steps`` batches on synthetic data; the
first epoch is warm-up (compilation, CUDA graph capture, allocator) and the reported rate
is the median of the others. (a) and every (b) candidate run one epoch each in turn, so a
change in machine load hits them alike. (c) reads the worker's own epoch clock from the
run's history (so Ray start-up is not in the rate) and reports the job's remaining wall
time (start-up, per-epoch checkpoints and sample grids, teardown) as ``stage_overhead_s``.
By default the script runs under the malloc settings the stage's Ray workers get
(``--allocator``), so c/b compares the stage's machinery, not two allocators.
"""

from __future__ import annotations

import json
import os
import shutil
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
    has_module,
    machine,
    median,
    parse,
    print_table,
    with_settings,
)
from benchmarks.textbook import TextbookRunner
from components.data.loader import TensorLoader
from components.data.spec import DataSpec
from components.data.synthetic import make_synthetic
from components.models import build_model
from components.training.loop import configure_runtime, fit

#: steps per epoch: 1.5-3 s an epoch on one CPU thread (short epochs, many of them: on a shared
#: machine, load changes hit (a) and (b) alike); GPUs get more.
CPU_STEPS = {"gan": 60, "cgan": 60, "dcgan": 20, "vae": 30, "ddpm": 6}
GPU_STEPS = 200
DEFAULT_CANDIDATES = {"cpu": "fp32", "cuda": "fp32,bf16,bf16+compile,bf16+cudagraphs"}


def parse_candidate(text: str) -> dict[str, Any]:
    """``bf16+cl+compile`` -> ``{"precision": "bf16", "compile": "default", "channels_last": True}`` (config fields).

    ``cl`` asks for channels-last explicitly (without it, ``bench_family`` turns it on for bf16
    conv networks on a GPU only). ``fused`` is not a config field: it swaps in fused Adam after the model is built (a what-if
    for CPU, where ``make_adam`` does not fuse; see ``fuse_optimizers``).
    """
    tokens = set(text.split("+"))
    unknown = tokens - {"fp32", "bf16", "cl", "compile", "cudagraphs", "fused"}
    if unknown:
        raise SystemExit(f"error: unknown candidate token(s) {sorted(unknown)} in {text!r}")
    compile_mode = "reduce-overhead" if "cudagraphs" in tokens else "default" if "compile" in tokens else "off"
    fields: dict[str, Any] = {"precision": "bf16" if "bf16" in tokens else "fp32", "compile": compile_mode}
    if "cl" in tokens:
        fields["channels_last"] = True
    return fields


def fuse_optimizers(model: Any) -> None:
    """Replace each (fresh) Adam/AdamW of ``model`` by the fused implementation, same hyperparameters."""
    for name, opt in model.optimizers.items():
        if opt.defaults.get("fused"):
            continue
        params = [p for group in opt.param_groups for p in group["params"]]
        d = opt.defaults
        model.optimizers[name] = type(opt)(params, lr=d["lr"], betas=d["betas"], weight_decay=d["weight_decay"],
                                           fused=True)


def is_conv(cfg: Any) -> bool:
    return cfg.family in ("dcgan", "ddpm") or (cfg.family == "vae" and cfg.architecture == "conv")


class ProjectRunner:
    """The project's loop, one epoch per call: ``fit`` resumes at the next epoch each time."""

    def __init__(self, cfg: Any, spec: DataSpec, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 fused: bool = False):
        self.cfg = cfg
        self.model = build_model(cfg, spec, device)
        if fused:
            fuse_optimizers(self.model)
        configure_runtime(self.model, cfg.precision, cfg.channels_last, cfg.compile)
        self.loader = TensorLoader(images, labels, cfg.batch_size, device, shuffle=True, seed=cfg.seed)
        self.next_epoch = 0

    def epoch(self) -> tuple[int, float]:
        stats = fit(self.model, self.loader, epochs=self.next_epoch + 1, start_epoch=self.next_epoch,
                    seed=self.cfg.seed, log_every=self.cfg.log_every, channels_last=self.cfg.channels_last)[0]
        self.next_epoch += 1
        return stats.images, stats.seconds


def measure(runners: dict[str, Any], repeats: int) -> dict[str, dict[str, Any]]:
    """Round-robin epochs over the runners; a (b) candidate that raises is dropped, with its error."""
    out: dict[str, dict[str, Any]] = {name: {"rates": [], "cpu_rates": [], "warmup_s": None, "error": None}
                                      for name in runners}
    for round_index in range(1 + repeats):
        for name, runner in runners.items():
            if out[name]["error"]:
                continue
            cpu_start = time.process_time()
            try:
                images, seconds = runner.epoch()
            except Exception as exc:  # a compile or CUDA-graph failure: fall back to the others
                if name == "a":
                    raise
                out[name]["error"] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if round_index == 0:
                out[name]["warmup_s"] = seconds
            else:
                out[name]["rates"].append(images / seconds)
                # per CPU-second of this process: what the loop costs, whatever else the machine runs
                out[name]["cpu_rates"].append(images / (time.process_time() - cpu_start))
    for record in out.values():
        record["images_per_s"] = median(record["rates"]) if record["rates"] else None
        record["images_per_cpu_s"] = median(record["cpu_rates"]) if record["cpu_rates"] else None
    return out


# --------------------------------------------------------------------------- (c) the train stage
def start_ray(threads: int, device: torch.device) -> tuple[str, int]:
    """A private local Ray instance (never someone else's cluster); returns its temp dir and a worker's threads."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from components.distributed.runner import PROJECT_ROOT, worker_env

    env = worker_env()  # as the stages' workers get it
    env["OMP_NUM_THREADS"] = str(threads)  # what Ray gives a worker of `threads` CPUs, made explicit
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(address="local", num_cpus=threads + 1, num_gpus=int(device.type == "cuda"), include_dashboard=False,
             runtime_env={"py_modules": [str(PROJECT_ROOT / "components")], "env_vars": env},
             logging_level="warning", _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
    worker_threads = ray.get(ray.remote(num_cpus=threads)(_torch_threads).remote())
    return temp_dir, int(worker_threads)


def stop_ray(temp_dir: str) -> None:
    """Shut ``start_ray``'s instance down and remove its temp dir."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _torch_threads() -> int:
    """Runs in a Ray worker: the intra-op threads torch uses there."""
    return torch.get_num_threads()


def stage_speed(cfg: Any, spec: DataSpec, images: np.ndarray, labels: np.ndarray, device: torch.device,
                threads: int, folder: Path, plain: bool = False, track: bool = True,
                loading: str = "memory") -> dict[str, Any]:
    """Train through ``run_job(train_job, ...)`` with MLflow tracking; rates from the run's history.

    The data goes as the train stage sends it: Parquet shards read by the worker through Ray Data,
    kept in memory or streamed (``loading``). ``plain`` runs the job in this process instead of on
    Ray; ``track=False`` leaves MLflow out (both only for ``stage_overhead``'s breakdown).
    """
    from components import tracking
    from components.config import LoadingConfig, MlflowConfig, RayConfig
    from components.data.shards import write_split
    from components.distributed.datasets import PreparedSource
    from components.distributed.jobs import Tracking, TrainJob
    from components.distributed.runner import run_job
    from components.distributed.train_jobs import HISTORY_FILE, train_job

    shards = folder / f"data-{time.time_ns()}"
    files = tuple(str(shards / r["file"]) for r in write_split(shards, "train", images, labels, shard_mb=16))
    where = None
    if track:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        run_id = tracking.start_run(uri, "benchmarks", cfg.family, {"benchmark": "train_speed"},
                                    {"batch_size": cfg.batch_size, "threads": threads})
        where = Tracking(uri, run_id, MlflowConfig().log_system_metrics)
    # no PipelineConfig here, so not TrainJob.from_config: the same fields, set as the train stage sets them
    job = TrainJob(name=cfg.family, config=cfg, data=spec, rows=len(images), loading=LoadingConfig(mode=loading),
                   tracking=where, grid_seed=0, progress=True)
    ray_cfg = RayConfig(num_workers=1, use_gpu=device.type == "cuda", resources_per_worker={"CPU": threads},
                        storage_path=str(folder / "ray_results"), max_failures=0)
    start = time.perf_counter()
    result = run_job(train_job, job, cfg=ray_cfg, name=f"bench-{cfg.family}-{time.time_ns()}", plain=plain,
                     datasets={"train": PreparedSource(files)})
    wall = time.perf_counter() - start
    try:
        epochs = [row for row in json.loads((result / HISTORY_FILE).read_text()) if "epoch" in row]
    finally:
        shutil.rmtree(result, ignore_errors=True)
    timed_epochs = epochs[1:]  # the first epoch is warm-up
    rates = [row["images_per_s"] for row in timed_epochs]
    # one worker: its training thread's images per CPU-second, and the share of the epoch it was on a CPU
    cpu_rates = [row["images_per_s"] * row["epoch_seconds"] / row["epoch_cpu_seconds"] for row in timed_epochs
                 if row.get("epoch_cpu_seconds")]
    on_cpu = [row["epoch_cpu_seconds"] / row["epoch_seconds"] for row in timed_epochs if row.get("epoch_cpu_seconds")]
    return {"images_per_s": median(rates), "rates": rates, "wall_s": wall,
            "images_per_cpu_s": median(cpu_rates) if cpu_rates else None,
            "on_cpu": median(on_cpu) if on_cpu else None,
            "stage_overhead_s": wall - sum(row["epoch_seconds"] for row in epochs)}


# --------------------------------------------------------------------------- main
def bench_family(cfg: Any, spec: DataSpec, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 candidates: list[str], repeats: int) -> dict[str, Any]:
    """(a) and every (b) candidate for one family; the fastest candidate is (b)."""
    runners: dict[str, Any] = {"a": TextbookRunner(build_model(cfg, spec, device), images, labels, cfg.batch_size)}
    settings: dict[str, Any] = {}
    failed: dict[str, dict[str, Any]] = {}
    for name in candidates:
        fields = parse_candidate(name)
        # channels-last pays with bf16 convolutions on the GPU (tensor-core NHWC kernels)
        fields.setdefault("channels_last", device.type == "cuda" and fields["precision"] == "bf16" and is_conv(cfg))
        settings[name] = with_settings(cfg, **fields)
        try:
            runners[name] = ProjectRunner(settings[name], spec, images, labels, device, "fused" in name.split("+"))
        except Exception as exc:  # noqa: BLE001 - a setting this device cannot run: reported, not fatal
            failed[name] = {"images_per_s": None, "images_per_cpu_s": None, "rates": [], "warmup_s": None,
                            "error": f"{type(exc).__name__}: {exc}"[:300]}
    measured = {**measure(runners, repeats), **failed}
    a = measured.pop("a")
    # (b) is the fastest setting the config can express: "fused" what-ifs are reported, never picked
    ok = {n: r for n, r in measured.items() if r["images_per_s"] and "fused" not in n.split("+")}
    if not ok:
        raise RuntimeError(f"{cfg.family}: every candidate of the project's loop failed: {measured}")
    best = max(ok, key=lambda n: ok[n]["images_per_s"])
    b = ok[best]
    on_cpu = device.type == "cpu"  # host CPU time says nothing about GPU throughput
    return {"a": a["images_per_s"], "a_rates": a["rates"], "b": b["images_per_s"], "b_settings": best,
            "b_config": settings[best], "candidates": measured, "b_over_a": b["images_per_s"] / a["images_per_s"],
            "b_over_a_cpu_time": b["images_per_cpu_s"] / a["images_per_cpu_s"] if on_cpu else None}


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (quick: 32)")
    p.add_argument("--steps", type=int, default=None, help="batches per epoch (default: per family and device)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs after the warm-up one (default 5, quick 2)")
    p.add_argument("--candidates", default=None,
                   help="runtime settings tried for (b), e.g. fp32,bf16,bf16+cl,bf16+compile,bf16+cudagraphs (cl = channels-last) "
                        f"(default cpu: {DEFAULT_CANDIDATES['cpu']}; cuda: {DEFAULT_CANDIDATES['cuda']})")
    p.add_argument("--no-stage", action="store_true", help="skip (c), the Ray Train + MLflow run")
    p.add_argument("--stream", action="store_true", help="also run (c) streaming its data (data.loading.mode: stream)")
    allocator_args(p)
    args, device, threads, families = parse(p)
    batch = args.batch_size or (32 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 5)
    candidates = (args.candidates or DEFAULT_CANDIDATES[device.type]).split(",")
    configs = family_configs(args.quick, families)
    steps = {f: args.steps or (3 if args.quick else GPU_STEPS if device.type == "cuda" else CPU_STEPS[f])
             for f in families}
    images, labels = make_synthetic(max(steps.values()) * batch, seed=0)
    spec = DataSpec(channels=1, height=28, width=28, num_classes=10)
    result: dict[str, Any] = {"benchmark": "train_speed", **machine(), "device": str(device), "batch_size": batch,
                              "threads": threads, "repeats": repeats, "quick": args.quick, "families": {}, "notes": []}
    stage = not args.no_stage and has_module("ray") and has_module("mlflow")
    if not args.no_stage and not stage:
        result["notes"].append("(c) skipped: ray and/or mlflow are not installed")
    folder = Path(tempfile.mkdtemp(prefix="train-speed-"))
    ray_temp = None
    try:
        if stage:
            ray_temp, result["ray_worker_threads"] = start_ray(threads, device)
        for family in families:
            n = steps[family] * batch
            cfg = with_settings(configs[family], batch_size=batch, epochs=1 + repeats)
            row = bench_family(cfg, spec, images[:n], labels[:n], device, candidates, repeats)
            row["steps_per_epoch"] = steps[family]
            if stage:
                best_cfg = row["b_config"]
                row.update({f"c_{k}": v for k, v in
                            stage_speed(best_cfg, spec, images[:n], labels[:n], device, threads, folder).items()})
                row["c"] = row.pop("c_images_per_s")
                row["c_over_b"] = row["c"] / row["b"]
                b_cpu = row["candidates"][row["b_settings"]]["images_per_cpu_s"]
                c_cpu = row.pop("c_images_per_cpu_s")
                row["c_over_b_cpu_time"] = c_cpu / b_cpu if c_cpu and b_cpu and device.type == "cpu" else None
                if args.stream:
                    row["c_stream"] = stage_speed(best_cfg, spec, images[:n], labels[:n], device, threads, folder,
                                                  loading="stream")["images_per_s"]
            row.pop("b_config")
            result["families"][family] = row
            print(f"{family}: a {row['a']:.0f}  b {row['b']:.0f} img/s ({row['b_settings']})"
                  + (f"  c {row['c']:.0f}" if stage else ""), flush=True)
    finally:
        if ray_temp:
            stop_ray(ray_temp)
        shutil.rmtree(folder, ignore_errors=True)
    report(result)
    emit_json(result, args.json)


def report(result: dict[str, Any]) -> None:
    """The summary table and the per-candidate table, in Markdown."""
    streamed = [(f, r["c"], r["c_stream"]) for f, r in result["families"].items() if "c_stream" in r]
    if streamed:
        print_table(["family", "(c) in memory img/s", "(c) streamed img/s"], streamed)
    print(f"\ntrain_speed on {result['device']} ({result.get('gpu') or result['cpu']}), batch {result['batch_size']}, "
          f"{result['threads']} thread(s), torch {result['torch']}, load {result['load_avg_1m']}")
    rows = [(f, r["a"], r["b"], r["b_settings"], r.get("c"), r["b_over_a"], r["b_over_a_cpu_time"],
             r.get("c_over_b"), r.get("c_over_b_cpu_time"), r.get("c_on_cpu"), r.get("c_stage_overhead_s"),
             r["steps_per_epoch"])
            for f, r in result["families"].items()]
    print_table(["family", "(a) textbook img/s", "(b) project img/s", "(b) settings", "(c) stage img/s", "b/a",
                 "b/a CPU-time", "c/b", "c/b CPU-time", "(c) on CPU", "(c) overhead s", "steps/epoch"], rows)
    rows = [(f, n, c["images_per_s"], c["images_per_cpu_s"], c["warmup_s"], c["error"] or "")
            for f, r in result["families"].items() for n, c in r["candidates"].items()]
    print()
    print_table(["family", "(b) candidate", "img/s", "img/CPU-s", "warm-up epoch s", "error"], rows)
    for note in result["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
