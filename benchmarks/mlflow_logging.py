"""What logging a training step costs the training thread: ``tracking.RunLogger`` against MLflow's
own asynchronous ``MlflowClient.log_batch(..., synchronous=False)`` (and a synchronous call, for
scale), into a sqlite store and, with ``--server``, a local ``mlflow server``.

Each variant owns a fresh run and logs ``--steps`` times ``--metrics`` values (the losses of one
log step). Reported: the time each call blocks the caller (median, p99), the time to flush what
is still queued at the end, and whether every point arrived (the metric histories are counted).

    python -m benchmarks.mlflow_logging                  # sqlite only
    python -m benchmarks.mlflow_logging --server         # and a local server (~5 s to start)

Not part of ``make test``; numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.mlflow_load import percentile


def run_variant(uri: str, name: str, steps: int, keys: list[str]) -> dict[str, Any]:
    """Log ``steps`` steps of ``keys`` with variant ``name``; its per-call and flush times (ms)."""
    from mlflow.entities import Metric

    from components import tracking

    client = tracking.client(uri)
    experiment = tracking.get_or_create_experiment(uri, "logging-benchmark")
    run_id = client.create_run(experiment, run_name=name).info.run_id
    values = {k: 0.5 for k in keys}
    calls: list[float] = []

    if name == "RunLogger":
        logger = tracking.RunLogger(uri, run_id)
        log: Callable[[int], Any] = lambda step: logger.log_metrics(values, step)
        flush: Callable[[], Any] = logger.close
    else:
        synchronous = name == "log_batch sync"
        pending: list[Any] = []  # RunOperations of the asynchronous calls

        def log(step: int) -> Any:
            now = int(time.time() * 1000)
            op = client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                                  synchronous=synchronous)
            if op is not None:
                pending.append(op)

        def flush() -> None:
            # mlflow.flush_async_logging() drains only the default store's queue: with a client
            # for another URI most points were still queued after it (measured), so wait on each
            for op in pending:
                op.wait()

    for step in range(steps):
        start = time.perf_counter()
        log(step)
        calls.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    flush()
    flush_ms = (time.perf_counter() - start) * 1000
    arrived = sum(len(client.get_metric_history(run_id, k)) for k in keys)
    client.set_terminated(run_id)
    return {"variant": name, "p50_ms": percentile(calls, 0.5), "p99_ms": percentile(calls, 0.99),
            "total_call_ms": sum(calls), "flush_ms": flush_ms, "points": arrived, "expected": steps * len(keys)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """A local MLflow server on a free port (sqlite store in ``folder``); returns it and its URL."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, 15)
    raise RuntimeError("mlflow server did not start within 120 s")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| store | variant | per call p50 ms | p99 ms | all calls ms | final flush ms | points arrived |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['store']} | {r['variant']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['total_call_ms']:.0f} "
              f"| {r['flush_ms']:.0f} | {r['points']}/{r['expected']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="log calls per variant")
    parser.add_argument("--metrics", type=int, default=4, help="values per call (a GAN logs 4 losses)")
    parser.add_argument("--server", action="store_true", help="also against a local mlflow server")
    args = parser.parse_args()
    keys = [f"train/loss_{i}" for i in range(args.metrics)]
    variants = ("RunLogger", "log_batch async", "log_batch sync")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlflow-logging-") as tmp:
        stores = {"sqlite": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
        server = None
        if args.server:
            server, stores["server"] = start_server(Path(tmp))
        try:
            for store, uri in stores.items():
                for name in variants:
                    rows.append({"store": store, **run_variant(uri, name, args.steps, keys)})
        finally:
            if server is not None:
                os.killpg(server.pid, 15)
                server.wait(timeout=30)
    print(table(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
