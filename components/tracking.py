"""Everything MLflow, in one place: URI resolution, reachability, ``ModelRun`` (a model's run from
creation or re-attachment to registration: run file, artifacts, logged generator, end status), and
``RunLogger``, the rank-0 logger that batches metrics on a background thread and retries hiccups
(the ``fit`` callback that feeds it is ``components.training.callbacks.TrackingCallback``).

MLflow is imported inside functions so that models and the loop never need it.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from components import layout, provenance
from components.config import MlflowConfig
from components.io import write_json
from components.models import family_kind

RUN_FILE = "mlflow_run.json"
LOST_WRITES_TAG = "tracking.lost_writes"  # on a run some of whose metrics or images never arrived


class TrackingError(RuntimeError):
    """The tracking store is unreachable or refused a write after retries."""


def resolve_tracking_uri(cfg: MlflowConfig, project_root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` > ``mlflow.tracking_uri`` > ``sqlite:///<project>/mlflow.db``.

    The project is ``layout.project_root()`` unless given: a DVC experiment's stages, whatever
    workspace copy they run in, all track into the project's one store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri:
        return uri
    root = layout.project_root() if project_root is None else Path(project_root)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str) -> Path | None:
    """Where the experiments of a local sqlite store keep their artifacts: ``mlruns/`` beside the
    database. None for a server, which has its own artifact store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, naming the URI, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered /health with HTTP {resp.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({exc}); start it (infra/local/stack start) "
                "or unset MLFLOW_TRACKING_URI to use the local store"
            ) from None
        return
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any store error means "cannot track"
        raise TrackingError(f"MLflow tracking store {uri} cannot be used: {exc}") from None


@functools.lru_cache(maxsize=8)
def client(uri: str):
    """One client per URI and process (a SQL store checks its schema on every new client)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if new. A local store's experiment keeps its artifacts beside
    the database: MLflow's default, ``./mlruns`` of the creating process, would be inside the
    temporary copy a ``dvc exp run --temp`` runs in, and deleted with it."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    artifacts = local_artifact_root(uri)
    try:
        return c.create_experiment(name, artifact_location=(artifacts / name).as_uri() if artifacts else None)
    except Exception:  # a queued experiment beside this one created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_run(uri: str, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any],
              run_id: str | None = None) -> str:
    """Create the model's run (or re-attach to ``run_id``, RUNNING again) and record tags and params; returns the id."""
    from mlflow.entities import Param, RunTag

    c = client(uri)
    if run_id is not None:
        try:
            c.get_run(run_id)
        except Exception:  # noqa: BLE001 - gone (store reset): start a new run
            run_id = None
    if run_id is None:
        run_id = c.create_run(get_or_create_experiment(uri, experiment), run_name=run_name).info.run_id
        c.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    else:
        c.update_run(run_id, status="RUNNING")  # the interrupted attempt ended it FAILED or KILLED
    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run_id


@dataclass
class ModelRun:
    """The one owner of a model's MLflow run, from creation (train, classifier) or re-attachment
    (sample, evaluate) to registration: the run file, the artifacts, the logged generator, the
    metrics and tags the stages log, and the end status. No stage calls the MLflow client by hand.

    Use as a context manager to end the run: FINISHED when the block completes, KILLED when it is
    interrupted (Ctrl-C), FAILED when it raises anything else. ``end=False`` (``attach``) leaves
    the status alone: the run belongs to the stage that created it.

    Attributes:
        uri: the tracking URI.
        run_id: the run.
        experiment: its experiment's name (recorded in the run file).
        end: whether leaving the ``with`` block ends the run.
        marker: a local file holding the id of a run not yet finished (``start``), so that a retry
            after an interruption re-attaches to it; removed once the run ends FINISHED.
    """

    uri: str
    run_id: str
    experiment: str = ""
    end: bool = True
    marker: Path | None = None

    @classmethod
    def start(cls, uri: str, experiment: str, name: str, tags: dict[str, str], params: dict[str, Any],
              marker: str | Path | None = None) -> ModelRun:
        """Create the run (or re-attach to the one ``marker`` names, RUNNING again) with its tags and params.

        Args:
            uri, experiment: where the run goes.
            name: the run's name (the model's name).
            tags: ``run_tags(...)``; params: flattened config.
            marker: where to remember the run until it finishes (None: a new run every time).
        """
        marker = Path(marker) if marker is not None else None
        previous = marker.read_text().strip() if marker is not None and marker.exists() else None
        run_id = start_run(uri, experiment, name, tags, params, run_id=previous or None)
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(run_id)
        return cls(uri, run_id, experiment, marker=marker)

    @classmethod
    def attach(cls, model_dir: str | Path, uri: str) -> ModelRun:
        """The run whose id the train stage wrote into ``model_dir/mlflow_run.json``; its status is left alone."""
        path = Path(model_dir) / RUN_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run the train stage for this model first")
        record = json.loads(path.read_text())
        return cls(uri, record["run_id"], record.get("experiment", ""), end=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self.end:
            status = ("FINISHED" if exc_type is None else
                      "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            _retry(lambda: client(self.uri).set_terminated(self.run_id, status), f"end run {self.run_id}")
            if status == "FINISHED" and self.marker is not None:
                self.marker.unlink(missing_ok=True)  # finished: a later run starts afresh

    def save(self, folder: str | Path) -> Path:
        """Write the run file (``mlflow_run.json``: run id, experiment, URI) into ``folder``; returns its path."""
        path = Path(folder) / RUN_FILE
        write_json(path, {"run_id": self.run_id, "experiment": self.experiment, "tracking_uri": self.uri})
        return path

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log numeric values at ``step`` in one batch (bools and non-numbers are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        _retry(lambda: client(self.uri).log_batch(self.run_id, metrics=batch), "log_batch")

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: client(self.uri).log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]),
               "set tags")

    def log_image(self, image: Any, key: str) -> None:
        """An ``HxW`` / ``HxWx3`` uint8 image under ``images/`` (as MLflow's ``log_image`` keys it)."""
        _retry(lambda: client(self.uri).log_image(self.run_id, image, key=key), f"log_image {key}")

    def log_artifacts(self, checkpoint: str | Path, extra_files: list[Path]) -> None:
        """The checkpoint (under ``checkpoints/``) and other files (plots) of the trained model."""
        c = client(self.uri)
        _retry(lambda: c.log_artifact(self.run_id, str(checkpoint), "checkpoints"), "log checkpoint")
        for path in extra_files:
            _retry(lambda p=path: c.log_artifact(self.run_id, str(p)), f"log {path.name}")

    def log_generator(self, checkpoint: str | Path, class_names: list[str]) -> str:
        """The checkpoint as a served generator (``components.serving.pyfunc``); returns its ``models:/`` URI."""
        from components.serving.pyfunc import log_generator

        return log_generator(self.uri, self.run_id, checkpoint, class_names)

    def register(self, experiment_prefix: str, model_name: str, evaluation: dict[str, Any]) -> Any:
        """Register the logged generator with its evaluation (``components.model_registry.register_run``)."""
        from components.model_registry import register_run

        return register_run(self.uri, self.run_id, experiment_prefix, model_name, evaluation)


def _retry(fn: Callable[[], Any], what: str, retries: int = 3, backoff_s: float = 0.5) -> None:
    for attempt in range(retries + 1):
        try:
            fn()
            return
        except Exception as exc:
            if attempt == retries:
                raise TrackingError(f"{what} failed after {retries + 1} tries: {exc}") from exc
            time.sleep(backoff_s * 2**attempt)


@dataclass
class RunLogger:
    """Rank-0 logger for one run: metrics batched off the training thread, retried on hiccups.

    A write that still fails after its retries is reported on stderr immediately and listed
    by ``close()``; it is never dropped silently.
    """

    uri: str
    run_id: str
    flush_interval_s: float = 2.0
    retries: int = 3
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client = client(self.uri)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # flush() on the training thread and the worker never drain at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._worker, name="mlflow-logger", daemon=True)
        self._thread.start()

    # -- producer side (training thread): cheap, non-blocking
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue.put(("metrics", dict(metrics), step, int(time.time() * 1000)))

    def log_image(self, image: Any, key: str, step: int) -> None:
        self._queue.put(("image", image, key, step))

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params now (once per run, so not batched). MLflow params cannot change: a resumed
        run that logs another value is reported as a failed write, the first value kept."""
        from mlflow.entities import Param

        batch = [Param(k, str(v)) for k, v in params.items()]
        with self._lock:
            self._guard(lambda: self._client.log_batch(self.run_id, params=batch), "log_params")

    # -- consumer side
    def _send_metrics(self, batch: list[tuple[dict[str, float], int, int]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), ts, step) for values, step, ts in batch for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            chunk = metrics[i : i + 1000]
            self._guard(lambda c=chunk: self._client.log_batch(self.run_id, metrics=c), "log_batch")

    def _guard(self, fn: Callable[[], Any], what: str) -> None:
        try:
            _retry(fn, what, self.retries)
        except TrackingError as exc:
            self.errors.append(str(exc))
            print(f"warning: MLflow {exc}", file=sys.stderr)

    def _drain(self) -> None:
        with self._lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        pending: list[tuple[dict[str, float], int, int]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            kind = item[0]
            if kind == "metrics":
                pending.append((item[1], item[2], item[3]))
            elif kind == "image":
                _, image, key, step = item
                self._guard(lambda i=image, k=key, s=step: self._client.log_image(self.run_id, i, key=k, step=s),
                            f"log_image {key}")
            self._queue.task_done()
        if pending:
            self._send_metrics(pending)

    def _worker(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_interval_s)
            self._drain()

    def flush(self) -> None:
        """Block until everything queued so far is written (or reported as failed)."""
        self._drain()

    def close(self) -> list[str]:
        """Flush, stop the thread, and return the errors that could not be retried away.

        The run itself says that it is incomplete: a ``tracking.lost_writes`` tag counts the
        writes that never arrived (best effort: the server may still be gone).
        """
        self._stop.set()
        self._thread.join(timeout=60)
        self._drain()
        if self.errors:
            lost = str(len(self.errors))
            self._guard(lambda: self._client.set_tag(self.run_id, LOST_WRITES_TAG, lost), "set_tag lost_writes")
        return self.errors


def run_tags(*, family: str, model_name: str, seed: int, data_checksum: str, workers: int, profile: str,
             stage: str) -> dict[str, str]:
    """The tags every run carries: what it is, where its code and data came from, what ran it."""
    tags = {
        "family": family,
        "kind": family_kind(family),
        "model_name": model_name,
        "seed": str(seed),
        "data_checksum": data_checksum,
        "ray_workers": str(workers),
        "profile": profile,
        "dvc_stage": stage,
        **provenance.git_info(),
        **provenance.experiment_info(),
        **provenance.image_info(),
        **{f"version.{k}": v for k, v in provenance.library_versions().items()},
    }
    return tags


def start_tracking(uri: str, run_id: str, system_metrics: bool) -> tuple[RunLogger, Any]:
    """Rank 0 of a training job: the batched run logger and (optionally) MLflow's system-metrics monitor.

    Args:
        uri: the tracking URI.
        run_id: the run the stage created (or re-attached to).
        system_metrics: also start MLflow's system-metrics monitor on the run.
    """
    logger = RunLogger(uri, run_id)
    monitor = None
    if system_metrics:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
        monitor.start()
    return logger, monitor


# --------------------------------------------------------------------------- sweeps
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent
TRIAL_TAG = "sweep.trial_id"  # a sweep trial's Tune id: finds the trial's run again after a resume


def find_run(uri: str, experiment: str, tags: dict[str, str]) -> Any | None:
    """The newest run of ``experiment`` carrying every tag of ``tags`` (an MLflow ``Run``), or None."""
    c = client(uri)
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = c.search_runs([found.experiment_id], filter_string=query, max_results=1, order_by=["start_time DESC"])
    return runs[0] if runs else None


def log_files(uri: str, run_id: str, paths: list[Path], folder: str | None = None) -> None:
    """Files as artifacts of the run (under ``folder``), retried like every other write."""
    c = client(uri)
    for path in paths:
        _retry(lambda p=path: c.log_artifact(run_id, str(p), folder), f"log {Path(path).name}")
