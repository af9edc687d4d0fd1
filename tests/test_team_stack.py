"""Ray Train checkpoints on a real S3 server (SeaweedFS, session fixture ``s3_server``): resume
from them, and wrong keys refused before any work. One Ray head for the module. And the stack's
MLflow server (``infra/local/stack``): strangers refused (401), the pipeline's credentials served.

MLflow on PostgreSQL + S3 and the DVC remote on S3 are exercised by the whole smoke pipeline
in tests/test_pipeline_e2e.py (started with ``infra/local/stack``).
"""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from project import make_project, read_json, run_stage
from servers import S3Server, local_stack

pytestmark = pytest.mark.slow

#: Variables that would let a process reach S3 on its own; stripped where a process must not.
S3_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
           "MLFLOW_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="module", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No S3 variables inherited from the caller, and no ~/.aws files: only what a test passes counts."""
    empty = tmp_path_factory.mktemp("no-aws")
    with pytest.MonkeyPatch.context() as mp:
        for name in S3_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        yield


@pytest.fixture(scope="module")
def ray_node_env(s3_server: S3Server, isolated_environment) -> dict[str, str]:
    """The module's Ray head (conftest.py's ``ray_address``) and so its workers get the S3 keys."""
    return s3_server.env()


def keys(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` (paginated)."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# --------------------------------------------------------------------------- 1. Ray checkpoints on S3
RAY_BUCKET = "stack-ray"


def test_interrupted_training_resumes_from_its_s3_checkpoint(tmp_path: Path, s3_server: S3Server,
                                                             ray_address: str) -> None:
    s3_server.make_bucket(RAY_BUCKET)
    project = make_project(tmp_path / "p")
    settings = ["--model", "gan", "--set", f"ray.storage_path=s3://{RAY_BUCKET}/ray", "--set", "ray.max_failures=0",
                "--set", "train.gan.log_every=2"]
    env = {"RAY_ADDRESS": ray_address, **s3_server.env()}
    marker = tmp_path / "fault-fired"
    failed = run_stage(project, "train", *settings, check=False, tracking="local",
                       env={**env, "GENMODELS_FAULT_AT_STEP": "6", "GENMODELS_FAULT_MARKER": str(marker)})
    assert failed.returncode != 0 and marker.read_text() == "6"  # step 6 = in epoch 2 (4 steps an epoch)
    assert not (project / "models" / "gan").exists()
    stored = keys(s3_server, RAY_BUCKET, "ray/")
    checkpoints = [k for k in stored if re.match(r"ray/train-gan-[0-9a-f]+/.*checkpoint_[^/]+/checkpoint\.pt$", k)]
    assert len(checkpoints) == 1, stored  # epoch 1's, written by the workers straight to S3
    run_prefix = "/".join(checkpoints[0].split("/")[:2]) + "/"

    resumed = run_stage(project, "train", *settings, env=env, tracking="local")
    assert "resumed from epoch 1" in resumed.stdout + resumed.stderr
    assert s3_server.secret_key not in resumed.stdout + resumed.stderr  # keys stay out of Ray's config and logs
    workers = read_json(project / "models" / "gan" / "workers.json")
    assert {w["step"] for w in workers} == {8}  # 2 epochs in all, the first one not repeated
    assert (project / "models" / "gan" / "checkpoint.pt").stat().st_size > 0
    assert keys(s3_server, RAY_BUCKET, run_prefix) == []  # finished: runner.delete_run emptied the run


def test_wrong_s3_keys_fail_before_training(tmp_path: Path, s3_server: S3Server, ray_address: str) -> None:
    s3_server.make_bucket(RAY_BUCKET)
    project = make_project(tmp_path / "p")
    env = {"RAY_ADDRESS": ray_address, **s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    run = run_stage(project, "train", "--model", "gan", "--set", f"ray.storage_path=s3://{RAY_BUCKET}/wrong",
                    env=env, check=False, tracking="local")
    assert run.returncode != 0
    assert f"checkpoint storage s3://{RAY_BUCKET}/wrong cannot be used" in run.stderr
    assert "AWS_SECRET_ACCESS_KEY" in run.stderr and "not-the-secret" not in run.stdout + run.stderr
    assert "resumed" not in run.stdout and "train gan" not in run.stdout  # no epoch ran
    assert keys(s3_server, RAY_BUCKET, "wrong") == []


# --------------------------------------------------------------------------- 2. who may come in
@pytest.fixture(scope="module")
def team_stack(isolated_environment) -> Iterator[dict[str, str]]:
    """``infra/local/stack`` started by its own script (private state and ports); what ``env`` exports."""
    with local_stack() as exported:
        yield exported


def test_the_stacks_mlflow_refuses_strangers_and_the_pipeline_logs_with_its_credentials(
        tmp_path: Path, team_stack: dict[str, str]) -> None:
    import mlflow

    uri = team_stack["MLFLOW_TRACKING_URI"]
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    wrong = base64.b64encode(f"{team_stack['MLFLOW_TRACKING_USERNAME']}:not-the-password".encode()).decode()
    for headers in ({}, {"Authorization": f"Basic {wrong}"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(search, headers=headers), timeout=10)
        assert refused.value.code == 401

    project = make_project(tmp_path / "p")
    run_stage(project, "train", "--model", "gan", "--plain", tracking="local",
              env=team_stack)  # what `eval "$(stack env)"` gives
    run_id = read_json(project / "models" / "gan" / "mlflow_run.json")["run_id"]
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(key, team_stack[key])
        client = mlflow.MlflowClient(uri)
        assert client.get_run(run_id).info.status == "FINISHED"
        assert client.get_metric_history(run_id, "train/loss_g")
        assert "checkpoints" in [a.path for a in client.list_artifacts(run_id)]
