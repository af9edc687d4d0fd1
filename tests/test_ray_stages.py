"""The compute stages as real Ray Train jobs (DDP on CPU workers) tracked in a real MLflow store."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from project import make_project, read_json, run_stage

from components.data.dataset import load_split
from components.training.checkpoint import model_from_checkpoint

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_address):
    """A project where gan was trained, sampled and evaluated with 2 workers, and vae trained."""
    project = make_project(tmp_path_factory.mktemp("project"))
    env = {"RAY_ADDRESS": ray_address}
    trained = run_stage(project, "train", "--model", "gan", env=env, tracking="local")
    (project / "terminal-train-gan.txt").write_text(trained.stdout + trained.stderr)  # what a person saw
    run_stage(project, "sample", "--model", "gan", env=env, tracking="local")
    run_stage(project, "classifier", env=env, tracking="local")
    run_stage(project, "evaluate", "--model", "gan", env=env, tracking="local")
    run_stage(project, "train", "--model", "vae", env=env, tracking="local")
    return project


def mlflow_client(project) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def test_ddp_ranks_end_equal_and_model_folder_complete(trained):
    folder = trained / "models" / "gan"
    workers = read_json(folder / "workers.json")
    assert [w["rank"] for w in workers] == [0, 1]
    assert workers[0]["weights"] == workers[1]["weights"]
    config = read_json(folder / "config.json")
    assert config["config"]["family"] == "gan" and config["data_spec"]["height"] == 28
    history = read_json(folder / "history.json")
    steps_per_epoch = 512 // 2 // 64  # 512 images, 2 workers, batch 64 per worker
    assert workers[0]["step"] == 2 * steps_per_epoch
    assert [row["epoch"] for row in history if "epoch" in row] == [1, 2]
    assert (folder / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert (trained / "plots" / "train" / "gan.csv").read_text().startswith("step,")


def test_a_model_with_its_own_num_workers_trains_on_that_many(trained, ray_address):
    """``train.gan.num_workers=1`` on a 2-worker configuration: one rank, which takes all 512 rows
    (twice the steps of a rank of two), and the run records the workers it really had."""
    done = run_stage(trained, "train", "--model", "gan", "--set", "train.gan.num_workers=1", "--out", "models/gan-1w",
                     "--plot", "plots/train/gan-1w.csv", env={"RAY_ADDRESS": ray_address}, tracking="local")
    assert "1 worker(s)" in done.stdout + done.stderr
    workers = read_json(trained / "models" / "gan-1w" / "workers.json")
    assert [w["rank"] for w in workers] == [0] and workers[0]["step"] == 2 * (512 // 64)
    run_id = read_json(trained / "models" / "gan-1w" / "mlflow_run.json")["run_id"]
    run = mlflow_client(trained).get_run(run_id)
    assert run.data.tags["ray_workers"] == "1" and run.data.params["ray.num_workers"] == "1"


def test_mlflow_run_holds_the_whole_story(trained):
    client = mlflow_client(trained)
    run_id = read_json(trained / "models" / "gan" / "mlflow_run.json")["run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == "gan"
    assert run.data.params["config.lr"] == "0.0002"
    assert run.data.tags["family"] == "gan" and run.data.tags["ray_workers"] == "2"
    for tag in ("git_commit", "data_checksum", "seed", "version.torch", "dvc_stage"):
        assert tag in run.data.tags
    history = client.get_metric_history(run_id, "train/loss_d")
    assert len(history) >= 2 and len({m.step for m in history}) == len(history)
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert sum("samples" in p and p.endswith(".png") for p in images) >= 2  # one grid per epoch
    assert any("final_samples" in p for p in images)  # the sample stage added to the same run
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/checkpoint.pt"]
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(m.source_run_id == run_id for m in models)
    for key in ("eval/fid", "eval/kid", "eval/precision", "eval/recall", "eval/ceiling_fid"):
        assert key in run.data.metrics  # the evaluate stage added to the same run
    champion = client.get_model_version_by_alias("genmodels-gan", "champion")  # registered by evaluate
    assert champion.run_id == run_id and float(champion.tags["eval/fid"]) == read_json(trained / "metrics" / "gan.json")["fid"]
    vae_run = read_json(trained / "models" / "vae" / "mlflow_run.json")["run_id"]
    assert client.get_run(vae_run).info.experiment_id == run.info.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == "genmodels-smoke-synthetic"


def test_metrics_file_is_finite_and_sits_between_floor_and_ceiling(trained):
    metrics = read_json(trained / "metrics" / "gan.json")
    for key in ("fid", "fid_std", "kid", "precision", "recall", "floor_fid", "ceiling_fid"):
        assert np.isfinite(metrics[key]), key
    assert metrics["floor_fid"] < metrics["ceiling_fid"]
    assert metrics["extractor_checksum"] == read_json(trained / "metrics" / "classifier.json")["extractor_checksum"]


def test_samples_do_not_depend_on_worker_count(trained, ray_address):
    """A single-pass generator samples on one worker by default (``sample.num_workers: null``)."""
    one = np.load(trained / "samples" / "gan" / "samples.npz")
    done = run_stage(trained, "sample", "--model", "gan", "--set", "sample.num_workers=2", "--out", "samples/gan-2w",
                     env={"RAY_ADDRESS": ray_address}, tracking="local")
    assert "Ray Train job, 2 worker(s)" in done.stdout + done.stderr
    two = np.load(trained / "samples" / "gan-2w" / "samples.npz")
    assert two["images"].shape == (200, 1, 28, 28) and two["images"].dtype == np.uint8
    np.testing.assert_array_equal(one["images"], two["images"])
    np.testing.assert_array_equal(one["labels"], np.arange(200) % 10)


def test_worker_fault_is_survived_through_failure_config(tmp_path, ray_address):
    project = make_project(tmp_path / "p")
    marker = tmp_path / "fault-fired"
    env = {"RAY_ADDRESS": ray_address, "GENMODELS_FAULT_AT_STEP": "6", "GENMODELS_FAULT_MARKER": str(marker)}
    run_stage(project, "train", "--model", "gan", "--set", "train.gan.log_every=2", env=env, tracking="local")
    assert marker.read_text() == "6"  # the fault really fired, in epoch 2 (4 steps an epoch)
    workers = read_json(project / "models" / "gan" / "workers.json")
    assert {w["step"] for w in workers} == {8}  # finished from the epoch-1 checkpoint, not from 0


def test_interrupted_stage_resumes_to_the_uninterrupted_weights(tmp_path, trained, ray_address):
    """The reference is ``trained``'s vae: same data and config (max_failures and log_every do
    not touch the weights), trained without interruption."""
    env = {"RAY_ADDRESS": ray_address}
    settings = ["--model", "vae", "--set", "ray.max_failures=0", "--set", "train.vae.log_every=2"]
    project = make_project(tmp_path / "interrupted")
    marker = tmp_path / "fault-fired"
    failed = run_stage(project, "train", *settings, check=False, tracking="local",
                       env={**env, "GENMODELS_FAULT_AT_STEP": "6", "GENMODELS_FAULT_MARKER": str(marker)})
    assert failed.returncode != 0 and marker.exists()
    assert not (project / "models" / "vae").exists()  # no half output for DVC to cache
    resumed = run_stage(project, "train", *settings, env=env, tracking="local")
    assert "resumed from epoch 1" in resumed.stderr + resumed.stdout
    want = read_json(trained / "models" / "vae" / "workers.json")[0]["weights"]
    assert read_json(project / "models" / "vae" / "workers.json")[0]["weights"] == want


def test_unreachable_tracking_server_fails_before_training(tmp_path, ray_address):
    project = make_project(tmp_path / "p")
    run = run_stage(project, "train", "--model", "gan", check=False,
                    env={"RAY_ADDRESS": ray_address, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, tracking="local")
    assert run.returncode == 1
    assert "http://127.0.0.1:9" in run.stderr and "unreachable" in run.stderr
    assert not (project / "ray_results").exists()  # no Ray job was started


WORKER_ENV_PROBE = """
import os, ray
from components.config import RayConfig
from components.distributed.runner import connect
connect(RayConfig())
names = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
for name, value in zip(names, ray.get(ray.remote(lambda: [os.environ.get(n) for n in names]).remote())):
    print(f"{name}={value}")
"""


@pytest.mark.parametrize(("driver_value", "worker_value"), [(None, "1"), ("4", "4")])
def test_workers_get_the_malloc_settings_unless_the_driver_says_otherwise(tmp_path, ray_address, driver_value,
                                                                          worker_value):
    """A job's workers start with one malloc arena and fixed mmap/trim thresholds (else Ray Train's
    training thread faults fresh pages in every step: docs/benchmarks.md); the driver's own value wins."""
    import os
    import subprocess
    import sys

    from project import ROOT
    from servers import HEAD_IP

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_address, "RAY_NODE_IP_ADDRESS": HEAD_IP,
                "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"})
    if driver_value:
        env["MALLOC_ARENA_MAX"] = driver_value
    run = subprocess.run([sys.executable, "-c", WORKER_ENV_PROBE], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert f"MALLOC_ARENA_MAX={worker_value}" in lines
    assert f"MALLOC_MMAP_THRESHOLD_={64 << 20}" in lines and f"MALLOC_TRIM_THRESHOLD_={256 << 20}" in lines


@pytest.mark.parametrize("workers", [1, 2])
def test_reference_features_are_the_saved_checkpoints(trained, ray_address, workers):
    """Every rank embeds with the saved checkpoint's state: a re-extraction from checkpoint.pt
    gives the stored reference features (BatchNorm's running statistics differ per DDP rank)."""
    folder = "models/classifier" if workers == 2 else "models/classifier-1w"
    if workers == 1:
        run_stage(trained, "classifier", "--set", "ray.num_workers=1", "--out", folder,
                  "--metrics", "metrics/classifier-1w.json", env={"RAY_ADDRESS": ray_address}, tracking="local")
    classifier = model_from_checkpoint(trained / folder / "checkpoint.pt")
    reference = np.load(trained / folder / "reference.npz")
    test = load_split(trained / "data" / "prepared", "test")
    images = torch.as_tensor(test.images[: len(reference["test_features"])]).float().div(127.5).sub(1.0)
    again = torch.cat([classifier.embed_and_predict(images[i : i + 100])[0]
                       for i in range(0, len(images), 100)]).double().numpy()
    np.testing.assert_allclose(reference["test_features"], again, rtol=0, atol=1e-5)


def test_the_terminal_shows_the_stage_and_its_log_file_holds_rays_detail(trained):
    """The train stage prints where it runs, rank 0's progress, its result and warnings once; Ray's
    per-checkpoint and per-report lines, Train's controller and Ray Data's progress go to the log."""
    text = (trained / "terminal-train-gan.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    first = next(line for line in lines if "Ray Train job, 2 worker(s)" in line)
    log = trained / re.search(r"Ray's output -> (\S+)", first).group(1)
    assert any(re.search(r"train gan: +\d+%\|", line) for line in lines)  # the progress bar
    assert re.search(r"^train gan: [\d,]+ parameters, step 8, run \w+ -> models/gan$", text, re.MULTILINE)
    assert max(Counter(lines).values()) <= 2, Counter(lines).most_common(3)
    for routine in ("Checkpoint successfully created", "Reporting training result", "TrainController",
                    "Running Dataset", "execution finished", "PlacementGroupCleaner", "INFO mlflow"):
        assert routine not in text, routine
    assert len(lines) < 30, text
    detail = log.read_text()
    assert "Checkpoint successfully created" in detail and "(TrainController pid=" in detail
    assert "(RayTrainWorker pid=" in detail
