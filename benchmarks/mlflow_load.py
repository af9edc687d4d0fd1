"""Load on the team MLflow server: N concurrent runs logging like the pipeline, for a fixed time.

Each of ``--runs`` threads (default 32) owns one run and, every ``--epoch-s`` seconds (one
"epoch"), sends ``--batches`` ``log_batch`` calls of ``--metrics`` points (the pipeline's losses
every log step) and one ``log_image`` (its sample grid). After ``--seconds`` it reports metric
points/s, p50/p99 latency per call kind, errors, and, with ``--pg-count-cmd``, checks that every
point it logged is a row in PostgreSQL.

    eval "$(infra/compose/cluster env)"     # server URL and credentials of the compose cluster
    python -m benchmarks.mlflow_load --seconds 60 \
      --pg-count-cmd "infra/compose/cluster exec -T postgres psql -h /tmp -U mlflow -d mlflow -Atc"

Not part of ``make test`` (it loads the server for a minute); numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import threading
import time
import uuid

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def worker(client, experiment_id: str, args: argparse.Namespace, stop_at: float, out: dict) -> None:
    """One run: log epochs until ``stop_at``; record latencies (s) and points sent into ``out``."""
    from mlflow.entities import Metric

    run_id = client.create_run(experiment_id).info.run_id
    grid = np.random.default_rng(0).integers(0, 255, (66, 66), dtype=np.uint8)  # an 8x8 grid of 6x6 tiles
    step, points, batch_lat, image_lat, errors = 0, 0, [], [], 0
    while time.monotonic() < stop_at:
        epoch_start = time.monotonic()
        for _ in range(args.batches):
            now = int(time.time() * 1000)
            metrics = [Metric(f"train/loss_{k}", float(step + k), now, step) for k in range(args.metrics)]
            t = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=metrics)
                points += len(metrics)
            except Exception:  # noqa: BLE001 - counted, the load goes on
                errors += 1
            batch_lat.append(time.perf_counter() - t)
            step += 1
        t = time.perf_counter()
        try:
            client.log_image(run_id, grid, key="samples", step=step)
        except Exception:  # noqa: BLE001
            errors += 1
        image_lat.append(time.perf_counter() - t)
        time.sleep(max(0.0, args.epoch_s - (time.monotonic() - epoch_start)))
    client.set_terminated(run_id)
    out.update(run_id=run_id, points=points, batch_lat=batch_lat, image_lat=image_lat, errors=errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--epoch-s", type=float, default=2.0, help="seconds between a run's epochs")
    parser.add_argument("--batches", type=int, default=4, help="log_batch calls per epoch")
    parser.add_argument("--metrics", type=int, default=8, help="metric points per log_batch")
    parser.add_argument("--pg-count-cmd", help="command prefix that runs one SQL query in the server's PostgreSQL")
    args = parser.parse_args()

    import mlflow

    client = mlflow.MlflowClient()  # MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD from the environment
    experiment_id = client.create_experiment(f"load-{uuid.uuid4().hex[:8]}")
    results = [{} for _ in range(args.runs)]
    stop_at = time.monotonic() + args.seconds
    threads = [threading.Thread(target=worker, args=(client, experiment_id, args, stop_at, r)) for r in results]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    points = sum(r["points"] for r in results)
    batch = [x for r in results for x in r["batch_lat"]]
    image = [x for r in results for x in r["image_lat"]]
    report = {
        "runs": args.runs, "seconds": round(elapsed, 1), "metric_points": points,
        "points_per_s": round(points / elapsed, 1), "log_batch_calls": len(batch), "log_image_calls": len(image),
        "errors": sum(r["errors"] for r in results),
        "log_batch_ms": {"p50": round(1000 * percentile(batch, 0.5), 1), "p99": round(1000 * percentile(batch, 0.99), 1),
                         "mean": round(1000 * statistics.fmean(batch), 1) if batch else None},
        "log_image_ms": {"p50": round(1000 * percentile(image, 0.5), 1), "p99": round(1000 * percentile(image, 0.99), 1)},
    }  # fmt: skip
    if args.pg_count_cmd:
        ids = ",".join(f"'{r['run_id']}'" for r in results)
        query = f"select count(*) from metrics where run_uuid in ({ids})"
        out = subprocess.run([*shlex.split(args.pg_count_cmd), query], capture_output=True, text=True, check=True)
        report["rows_in_postgres"] = int(out.stdout.split()[-1])
        report["all_points_stored"] = report["rows_in_postgres"] == points
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
