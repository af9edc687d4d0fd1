"""Run a worker body (``train_jobs.py``, ``inference_jobs.py``) as a Ray Train ``TorchTrainer`` job, or in-process with ``plain``.

Connection: ``RAY_ADDRESS`` (or ``ray.address``) names a cluster to join, with the
``components`` package shipped to the workers; otherwise a running local cluster
(``ray start --head``) is joined, and only if there is none a local instance is started.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from components import layout
from components.config import RayConfig
from components.distributed import console
from components.distributed.datasets import Source, ray_datasets
from components.distributed.malloc import MALLOC_SETTINGS
from components.distributed.session import Session

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Environment variables that describe where things are (never credentials): forwarded to workers.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                 "GENMODELS_FAULT_AT_STEP", "GENMODELS_FAULT_MARKER", "OMP_NUM_THREADS",
                 "GENMODELS_IMAGE", "GENMODELS_GIT_COMMIT", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                 "MALLOC_TRIM_THRESHOLD_", "GENMODELS_CPU_BF16", "TORCHINDUCTOR_CACHE_DIR")
# glibc's malloc in every worker (components/distributed/malloc.py says why), unless the driver's
# environment says otherwise. Train's print patch routes a worker's print() through a logger *and*,
# where something has wrapped sys.stdout (MLflow's system metrics do), tees it: every line twice.
WORKER_ENV_DEFAULTS = {**MALLOC_SETTINGS, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}

MAX_JOB_BYTES = 64 << 20  # a job spec holds settings and model weights (a few MB), never data
#: a job spec (``jobs.py``): what one worker body takes
Job = TypeVar("Job")


class ClusterUnreachable(ConnectionError):
    """``RAY_ADDRESS`` (or ``ray.address``) names a head where nothing answers."""


class JobFailed(RuntimeError):
    """A Ray Train job gave up (retries spent); the message names the nodes lost meanwhile."""


def _alive_nodes() -> dict[str, str]:
    import ray

    return {n["NodeID"]: f"{n['NodeManagerHostname']} ({n['NodeManagerAddress']}, node {n['NodeID'][:12]})"
            for n in ray.nodes() if n["Alive"]}


def check_cluster(cfg: RayConfig, timeout_s: float = 5.0) -> None:
    """Fail in seconds, before any work, when the named Ray head does not accept connections.

    ``ray.init(address=...)`` itself retries silently for minutes against a dead address.

    Args:
        cfg: Ray settings; ``RAY_ADDRESS`` wins over ``cfg.address``. No address, ``auto`` and
            ``local`` are not checked (they find or start a local instance).
        timeout_s: how long one TCP connection attempt may take.

    Raises:
        ClusterUnreachable: one line naming the address.
    """
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if not address or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"RAY_ADDRESS {address!r} is not host:port (or ray://host:port, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterUnreachable(f"no Ray cluster at {address} ({reason}): start its head or fix RAY_ADDRESS") from None


def worker_env() -> dict[str, str]:
    """The environment variables every Ray worker of a job gets: the defaults, then the forwarded ones.

    A cluster address the driver was given goes along too: Train's controller and its placement-group
    cleaner query the State API at "auto", which fails ("multiple active Ray instances") when other
    Ray instances run on the same machine (another pipeline, a test, a queued experiment).
    """
    address = os.environ.get("RAY_ADDRESS", "")
    named = {"RAY_ADDRESS": address} if address and address not in ("auto", "local") and "://" not in address else {}
    compile_cache = {"TORCHINDUCTOR_CACHE_DIR": str(layout.compile_cache_dir())}  # used by `compile` only
    return {**WORKER_ENV_DEFAULTS, **compile_cache, **named,
            **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}


def connect(cfg: RayConfig) -> float:
    """Initialise Ray once per process (after ``check_cluster``); returns the seconds it took."""
    import ray

    if ray.is_initialized():
        return 0.0
    check_cluster(cfg)
    start = time.perf_counter()
    runtime_env: dict = {"env_vars": {**({} if console.verbose() else console.QUIET_WORKER_ENV), **worker_env()}}
    # Ship the library to the workers, unless the cluster already imports it from this checkout
    # (infra/local/with-ray starts its head with PYTHONPATH set and GENMODELS_SHIP_CODE=0). A DVC
    # experiment's copy of the workspace may hold other code than the checkout: it always ships.
    if os.environ.get("GENMODELS_SHIP_CODE", "1") != "0" or layout.experiment_copy():
        runtime_env["py_modules"] = [str(PROJECT_ROOT / "components")]
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    # The driver's own node address: a local instance stays on loopback; RAY_NODE_IP_ADDRESS names
    # it when joining a cluster whose head binds a loopback address (tests, infra/local/with-ray).
    node_ip = os.environ.get("RAY_NODE_IP_ADDRESS") or (None if address else "127.0.0.1")
    common = {"runtime_env": runtime_env, "log_to_driver": True, "logging_level": "warning",
              "_node_ip_address": node_ip}
    if address:
        ray.init(address=address, **common)
    else:
        try:
            ray.init(address="auto", **common)
        except ConnectionError:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **common)
    return time.perf_counter() - start


def run_name(prefix: str, payload: dict[str, Any]) -> str:
    """A Ray run name that changes whenever the job's config does, so resume never mixes configs."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    # Queued experiments run side by side: on shared (S3) checkpoint storage, two of them with the
    # same config must not resume from each other's checkpoints.
    copy = layout.experiment_copy()
    return f"{prefix}-{copy}-{digest}" if copy else f"{prefix}-{digest}"


class StorageError(RuntimeError):
    """Remote checkpoint storage (``ray.storage_path = s3://...``) cannot be used."""


def storage_root(storage_path: str) -> str:
    """An absolute local folder, or the URI unchanged (``s3://bucket/prefix``)."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).resolve())  # relative to the stage's folder (DVC runs stages in the repo root)


def remote_fs(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for ``uri`` and the path on it, resolved as Ray Train resolves it.

    pyarrow (25, checked in tests/test_team_stack.py) reads ``AWS_ENDPOINT_URL`` (not the
    service-specific ``AWS_ENDPOINT_URL_S3``), ``AWS_DEFAULT_REGION`` and the key variables itself,
    so Ray's default resolution reaches a non-AWS S3 server (SeaweedFS, MinIO) without an explicit
    ``storage_filesystem``, and keys never pass through our code or Ray's config.
    """
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def check_storage(storage: str) -> None:
    """Fail before any Ray work when remote storage cannot be listed or written.

    Args:
        storage: ``storage_root``'s result; local folders are not checked.

    Raises:
        StorageError: one line naming the URI (bucket missing, wrong keys, endpoint down).
    """
    if "://" not in storage:
        return
    import pyarrow.fs

    try:
        fs, path = remote_fs(storage)
        fs.create_dir(path)  # S3: an empty "prefix/" marker; fails on a missing bucket or a refused write
        fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(
            f"checkpoint storage {storage} cannot be used ({reason}); check that the bucket exists and that "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a non-AWS S3) are right"
        ) from None


def _ray_entry(config: dict[str, Any], *, body: Callable[[Any, Session], object]) -> None:
    """A Ray Train worker's loop function: ``train_loop_config`` is ``{"job": spec}``."""
    from components.distributed.session import RaySession

    body(config["job"], RaySession())


def check_small(job: object, limit: int = MAX_JOB_BYTES) -> None:
    """Refuse a job spec that carries data: arrays and tensors go through ``datasets``, not
    ``train_loop_config`` (Ray pickles it into every worker's task).

    Raises:
        TypeError: naming the field or key that holds an array, or saying how big the job is.
    """
    import pickle

    def walk(value: Any, path: str) -> None:
        if isinstance(value, np.ndarray) or torch.is_tensor(value):
            raise TypeError(f"job[{path}] is an array: pass data to run_job's datasets, not in the job")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name), f"{path}.{field.name}" if path else field.name)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(job, "")
    size = len(pickle.dumps(job))
    if size > limit:
        raise TypeError(f"the job is {size} bytes pickled (limit {limit}): pass data through datasets")


def run_job(body: Callable[[Job, Session], object], job: Job, *, cfg: RayConfig, name: str,
            plain: bool = False, datasets: dict[str, Source] | None = None) -> Path:
    """Run ``body(job, session)`` and return a local folder holding its results: what it sent with
    ``session.send_results`` (inference, the classifier), else its last checkpoint (training).

    The run's checkpoints are deleted from storage after success, so a later run with the same
    name starts from scratch instead of resuming a finished run.

    Args:
        body: a worker body from ``train_jobs.py`` or ``inference_jobs.py``.
        job: its spec from ``jobs.py`` (config, names, model weights; no arrays: ``check_small``).
        datasets: its data, by name; each rank reads its share with ``session.dataset(name)``
            (Ray Datasets split over the workers, or the whole arrays in ``plain``).
        cfg: Ray settings (workers, GPUs, storage, failures).
        name: the run name; re-running an interrupted job with the same name resumes it.
        plain: run in this process without Ray (debugging; same code path otherwise).

    Returns:
        A temporary folder (caller removes it) with the results' files.
    """
    check_small(job)
    storage = storage_root(cfg.storage_path)
    out = Path(tempfile.mkdtemp(prefix=f"{name}-result-"))
    if plain:
        from components.distributed.session import LocalSession

        root = Path(storage) / name if "://" not in storage else Path(tempfile.mkdtemp(prefix=name))
        session = LocalSession(root, datasets=datasets)
        body(job, session)
        if session.results.exists():
            shutil.copytree(session.results, out, dirs_exist_ok=True)
        else:
            with session.latest_checkpoint() as folder:
                shutil.copytree(folder, out, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        return out

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    check_storage(storage)  # before connecting: a wrong key must not cost a cluster start
    # Read by the driver and passed on to the Train controller it starts; an explicit environment wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.health_check_interval_s))
    connect(cfg)
    log = console.route_worker_output(layout.logs_dir() / f"{name}.log")
    import ray

    where = ray.get_runtime_context().gcs_address
    print(f"{name}: Ray Train job, {cfg.num_workers} worker(s){' with GPUs' if cfg.use_gpu else ''} on the "
          f"cluster at {where}; Ray's output -> {log}", flush=True)
    ray_data, data_config = ray_datasets(datasets or {}, cfg.num_workers)
    trainer = TorchTrainer(
        functools.partial(_ray_entry, body=body),
        train_loop_config={"job": job},  # Ray wants a dict: the spec travels pickled inside it
        datasets=ray_data,
        dataset_config=data_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=dict(cfg.resources_per_worker),
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(name=name, storage_path=storage,
                             # a lost node's group that cannot be placed again: retried as often, not forever
                             failure_config=FailureConfig(max_failures=cfg.max_failures,
                                                          controller_failure_limit=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep)),
    )
    before = _alive_nodes()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray's TrainingFailedError and kin: say which nodes went away
        try:
            alive = _alive_nodes()
        except Exception:  # noqa: BLE001 - the head itself is gone: every node counts as lost
            alive = {}
        lost = [where for node, where in before.items() if node not in alive]
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise JobFailed(f"Ray job {name} failed; nodes lost during it: {', '.join(lost) or 'none'}; "
                        f"{type(exc).__name__}: {reason}") from exc
    if result.checkpoint is None:  # under Ray, send_results' files travel as the last checkpoint too
        raise RuntimeError(f"Ray job {name} finished without results or a checkpoint")
    result.checkpoint.to_directory(str(out))
    delete_run(storage, name)
    return out


def delete_run(storage: str, name: str) -> None:
    """Remove a finished run's folder from local or remote (``s3://``) storage."""
    if "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
        return
    fs, path = remote_fs(storage.rstrip("/") + "/" + name)
    try:
        fs.delete_dir(path)
    except OSError:
        pass
