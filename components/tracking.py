"""Everything MLflow, in one place: URI resolution, reachability, run creation/re-attachment,
and a rank-0 logger that batches metrics on a background thread and retries hiccups.

MLflow is imported inside functions so that models and the loop never need it.
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import MlflowConfig

RUN_FILE = "mlflow_run.json"
#: The shared metric vocabulary: the same name means the same thing for every family.
FAMILY_KIND = {"gan": "gan", "cgan": "gan", "dcgan": "gan", "vae": "vae", "ddpm": "diffusion"}


class TrackingError(RuntimeError):
    """The tracking store is unreachable or refused a write after retries."""


def resolve_tracking_uri(cfg: MlflowConfig, project_root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` > ``mlflow.tracking_uri`` > ``sqlite:///<project>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri:
        return uri
    return f"sqlite:///{(Path(project_root) / 'mlflow.db').resolve()}"


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


def git_info(root: str | Path = ".") -> dict[str, str]:
    """Current commit and whether the work tree has uncommitted changes (in the image: its build's commit).

    ``dvc.lock`` does not count: DVC rewrites it after every stage of the very run being tagged.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock")))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        # The project image has no .git; its build recorded the commit (GENMODELS_GIT_COMMIT).
        return {"git_commit": os.environ.get("GENMODELS_GIT_COMMIT", "unknown"), "git_dirty": "unknown"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "ray", "mlflow", "dvc", "pydantic", "torchmetrics"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def get_or_create_experiment(uri: str, name: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def start_run(uri: str, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any],
              run_id: str | None = None) -> str:
    """Create the model's run (or re-attach to ``run_id``) and record tags and params; returns the id."""
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
    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return run_id


def read_run_file(model_dir: str | Path) -> dict[str, str]:
    """The run id a train stage wrote into ``models/NAME/mlflow_run.json``."""
    path = Path(model_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run the train stage for this model first")
    return json.loads(path.read_text())


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

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(("artifact", str(path), artifact_path))

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
            elif kind == "artifact":
                _, path, artifact_path = item
                self._guard(lambda p=path, a=artifact_path: self._client.log_artifact(self.run_id, p, a),
                            f"log_artifact {path}")
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
        """Flush, stop the thread, and return the errors that could not be retried away."""
        self._stop.set()
        self._thread.join(timeout=60)
        self._drain()
        return self.errors


def png_bytes(figure_or_array: Any) -> bytes:
    """PNG bytes from a matplotlib figure or an HxW / HxWx3 uint8 array."""
    buf = io.BytesIO()
    if hasattr(figure_or_array, "savefig"):
        figure_or_array.savefig(buf, format="png", bbox_inches="tight")
    else:
        from PIL import Image

        Image.fromarray(figure_or_array).save(buf, format="png")
    return buf.getvalue()


def warn_errors(errors: list[str]) -> None:
    if errors:
        warnings.warn(f"{len(errors)} MLflow writes failed after retries: {errors[:3]}", stacklevel=2)


def image_info() -> dict[str, str]:
    """``{"image": <ref@sha256:...>}`` when running in the project image, else ``{}``.

    An image cannot hold its own digest, so the launcher (infra/compose, KubeRay, ``ray up``) sets
    ``GENMODELS_IMAGE`` to the pinned reference it started the container from.
    """
    image = os.environ.get("GENMODELS_IMAGE", "")
    return {"image": image} if image else {}


def run_tags(*, family: str, model_name: str, seed: int, data_checksum: str, workers: int, profile: str,
             stage: str) -> dict[str, str]:
    """The tags every run carries: what it is, where its code and data came from, what ran it."""
    tags = {
        "family": family,
        "kind": FAMILY_KIND.get(family, family),
        "model_name": model_name,
        "seed": str(seed),
        "data_checksum": data_checksum,
        "ray_workers": str(workers),
        "profile": profile,
        "dvc_stage": stage,
        **git_info(),
        **image_info(),
        **{f"version.{k}": v for k, v in library_versions().items()},
    }
    return tags


def log_final_model(uri: str, run_id: str, networks: dict[str, Any], checkpoint: str | Path,
                    extra_files: list[Path]) -> None:
    """Driver side, after training: the checkpoint, the networks as an MLflow PyTorch model, plots."""
    import mlflow
    import mlflow.pytorch
    import torch

    c = client(uri)
    _retry(lambda: c.log_artifact(run_id, str(checkpoint), "checkpoints"), "log checkpoint")
    for path in extra_files:
        _retry(lambda p=path: c.log_artifact(run_id, str(p)), f"log {path.name}")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        # pip_requirements given explicitly: inferring them imports the world and takes ~10 s.
        # pickle, not pt2: pt2 traces forward() with an example input, and these networks have several.
        mlflow.pytorch.log_model(torch.nn.ModuleDict(networks), name="model", serialization_format="pickle",
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
