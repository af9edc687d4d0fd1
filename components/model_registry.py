"""The MLflow Model Registry: each evaluated model as a version of ``<experiment_prefix>-<model name>``,
and the ``champion`` alias on the best FID among versions scored in the same feature space.

One version per MLflow run (re-evaluating a run updates its version's tags). FIDs are only
comparable under the same classifier, so the alias is decided among the versions whose
``extractor_checksum`` tag equals the newest one's; ties keep the older version, so a new
version takes the alias only with a strictly lower FID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components.tracking import TrackingError, client

CHAMPION = "champion"


@dataclass(frozen=True)
class Registration:
    """Where an evaluated run landed: its version, and which version is champion now."""

    name: str
    version: int
    champion: int | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def registered_name(experiment_prefix: str, model_name: str) -> str:
    """``genmodels-ddpm`` for prefix ``genmodels`` and model ``ddpm``."""
    return f"{experiment_prefix}-{model_name}"


def register_evaluated(uri: str, run_id: str, name: str, model_uri: str, metrics: dict[str, float],
                       tags: dict[str, str]) -> Registration:
    """Register (or re-tag) the run's generator and move ``champion`` if it is now the best.

    Args:
        uri: tracking (= registry) URI.
        run_id: the model's MLflow run; its version is created once, then re-tagged.
        name: registered model name (``registered_name``).
        model_uri: the logged generator, ``models:/<model id>``.
        metrics: the evaluation's numbers; stored as ``eval/<key>`` tags (``eval/fid`` decides the alias).
        tags: more version tags; must hold ``extractor_checksum`` (and should ``data_checksum``).

    Returns:
        The registration.
    """
    if "extractor_checksum" not in tags:
        raise ValueError("tags must include extractor_checksum: FIDs are compared only within one feature space")
    c = client(uri)
    try:
        version = _version_of_run(c, name, run_id) or _create_version(c, name, run_id, model_uri)
        values = {**{f"eval/{k}": repr(float(v)) for k, v in metrics.items()}, **{k: str(v) for k, v in tags.items()}}
        for key, value in values.items():
            c.set_model_version_tag(name, str(version), key, value)
        champion = update_champion(uri, name, tags["extractor_checksum"])
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any registry failure: one line naming the store
        raise TrackingError(f"registering {name} (run {run_id}) in {uri} failed: {exc}") from None
    return Registration(name=name, version=version, champion=champion)


def update_champion(uri: str, name: str, extractor_checksum: str) -> int | None:
    """Point ``champion`` at the lowest-FID version scored with ``extractor_checksum``; returns it.

    Versions of other extractors are not candidates (their FIDs live in another feature space);
    when none qualifies the alias is left as it is and None is returned.
    """
    c = client(uri)
    best: tuple[float, int] | None = None
    for mv in c.search_model_versions(f"name = '{name}'"):
        fid = _fid(mv.tags)
        if mv.tags.get("extractor_checksum") == extractor_checksum and fid is not None:
            best = min(best, (fid, int(mv.version))) if best else (fid, int(mv.version))
    if best is None:
        return None
    c.set_registered_model_alias(name, CHAMPION, str(best[1]))
    return best[1]


def _fid(tags: dict[str, str]) -> float | None:
    try:
        fid = float(tags["eval/fid"])
    except (KeyError, ValueError):
        return None
    return fid if math.isfinite(fid) else None


def _version_of_run(c: Any, name: str, run_id: str) -> int | None:
    found = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(int(mv.version) for mv in found) if found else None


def _create_version(c: Any, name: str, run_id: str, model_uri: str) -> int:
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, description="Generator pyfunc per evaluated run; alias champion = best FID "
                                                    "under the current classifier (components/model_registry.py).")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and exc.error_code not in ("RESOURCE_ALREADY_EXISTS",
                                                                               "ALREADY_EXISTS"):
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    # A models:/ source is resolved by the registry store through MLflow's *global* tracking URI (not
    # this client's); the logged model's artifact location is what it would resolve to.
    source = c.get_logged_model(model_id).artifact_location if model_id else model_uri
    mv = c.create_model_version(name, source=source, run_id=run_id, model_id=model_id)
    return int(mv.version)


def register_run(uri: str, run_id: str, experiment_prefix: str, model_name: str,
                 evaluation: dict[str, Any]) -> Registration:
    """The evaluate stage's call: register the run's logged generator with its evaluation.

    Args:
        evaluation: ``metrics/NAME.json``'s content; its numbers become ``eval/*`` tags, its
            ``extractor_checksum`` (and the run's ``data_checksum`` tag) plain tags.
    """
    from components.serving.pyfunc import MODEL_URI_TAG

    run_tags = client(uri).get_run(run_id).data.tags
    model_uri = run_tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise TrackingError(f"run {run_id} has no logged generator (tag {MODEL_URI_TAG}): re-run its train stage")
    metrics = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tags = {"extractor_checksum": str(evaluation.get("extractor_checksum")),
            "data_checksum": run_tags.get("data_checksum", "unknown"), "model_name": model_name,
            "family": str(evaluation.get("family", run_tags.get("family", "?"))),
            **{k: run_tags[k] for k in ("dvc_exp_name", "dvc_exp_baseline_rev") if k in run_tags}}
    return register_evaluated(uri, run_id, registered_name(experiment_prefix, model_name), model_uri, metrics, tags)
