"""The Model Registry: one version per evaluated run, eval/* and checksum tags, and the champion
alias on the best FID within one extractor — on the sqlite store and on the team stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import local_stack
from serving_models import log_tiny

from components.model_registry import CHAMPION, register_run

PREFIX = "genmodels-test"


def evaluation(fid: float, extractor: str = "ex-a") -> dict:
    """What the evaluate stage writes into metrics/NAME.json (the fields registration reads)."""
    return {"model": "gan", "family": "gan", "fid": fid, "fid_std": 0.5, "kid": 0.01, "precision": 0.7,
            "extractor_checksum": extractor, "num_samples": 200}


def check_champion_follows_the_best_fid(uri: str, folder: Path) -> None:
    from mlflow.tracking import MlflowClient

    runs = [log_tiny(uri, "gan", folder / f"run{i}", experiment=f"{PREFIX}-registry", seed=i) for i in range(4)]
    first = register_run(uri, runs[0][0], PREFIX, "gan", evaluation(50.0))
    assert (first.name, first.version, first.champion) == ("genmodels-test-gan", 1, 1)
    better = register_run(uri, runs[1][0], PREFIX, "gan", evaluation(30.0))
    assert (better.version, better.champion) == (2, 2)
    worse = register_run(uri, runs[2][0], PREFIX, "gan", evaluation(40.0))
    assert (worse.version, worse.champion) == (3, 2)  # a worse new version does not take the alias
    again = register_run(uri, runs[2][0], PREFIX, "gan", evaluation(41.0))
    assert again.version == 3  # one version per run: re-evaluating re-tags it
    client = MlflowClient(uri)
    assert int(client.get_model_version_by_alias("genmodels-test-gan", CHAMPION).version) == 2
    tags = client.get_model_version("genmodels-test-gan", "3").tags
    assert float(tags["eval/fid"]) == 41.0 and float(tags["eval/precision"]) == 0.7
    assert tags["extractor_checksum"] == "ex-a" and tags["data_checksum"] == "unknown"  # no train-stage tag here
    assert client.get_model_version("genmodels-test-gan", "3").run_id == runs[2][0]
    assert len(client.search_model_versions("name = 'genmodels-test-gan'")) == 3

    # a new classifier: old FIDs live in another feature space, so its first version is champion
    other = register_run(uri, runs[3][0], PREFIX, "gan", evaluation(45.0, extractor="ex-b"))
    assert (other.version, other.champion) == (4, 4)

    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    from components.serving.generator import decode_images

    images = mlflow.pyfunc.load_model(f"models:/genmodels-test-gan@{CHAMPION}").predict(
        pd.DataFrame({"num_images": [2]}), params={"seed": 3})["image"].tolist()
    assert decode_images(images).shape == (2, 1, 28, 28) and decode_images(images).dtype == np.uint8


def test_champion_on_the_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    check_champion_follows_the_best_fid(uri, tmp_path)


def test_a_run_without_a_logged_generator_is_a_clear_error(tmp_path: Path) -> None:
    from components.tracking import TrackingError, client, get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = client(uri).create_run(get_or_create_experiment(uri, "bare")).info.run_id
    with pytest.raises(TrackingError, match="has no logged generator .*re-run its train stage"):
        register_run(uri, run_id, PREFIX, "gan", evaluation(1.0))


@pytest.fixture(scope="module")
def team_stack() -> Iterator[dict[str, str]]:
    """The team stack (PostgreSQL + S3 behind an MLflow server), started by its own script."""
    with local_stack() as exported:
        yield exported


@pytest.mark.slow
def test_champion_on_the_team_stack(team_stack: dict[str, str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in team_stack.items():
        monkeypatch.setenv(key, value)
    check_champion_follows_the_best_fid(team_stack["MLFLOW_TRACKING_URI"], tmp_path)
