"""Hyper-parameter sweeps (``pipelines.sweep``): the sweep file's validation, and real Ray Tune sweeps
of Ray Train trials on a local head, recorded in a real MLflow store."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from project import ROOT, git_project, make_project, run_command, run_stage
from servers import HEAD_IP

from components.config import ConfigError, GANConfig, SweepConfig, VAEConfig, load_config, load_sweep
from components.sweep.space import best_overlay, dvc_command, overlay_overrides, trial_config, tune_space
from components.tracking import PARENT_RUN_TAG, TRIAL_TAG

#: a tiny VAE sweep of 4 trials: 1 worker per trial (2 trials at once on the 2-CPU head), one epoch of
#: 8 steps, 100 images scored; lr 1e40 diverges (non-finite loss): those 2 trials fail, the others finish
SWEEP = {"space": {"lr": {"grid": [3.0e-3, 1.0e40]}, "hidden_dim": {"grid": [8, 16]}},
         "trials": 1, "max_concurrent": 2, "steps": 8, "num_samples": 100, "objective": "fid"}
SETTINGS = ["--set", "ray.num_workers=1", "--set", "ray.max_failures=0"]
EXPERIMENT = "genmodels-smoke-synthetic-sweeps"


# --------------------------------------------------------------------------- the sweep file, no Ray
def write_sweep(path: Path, sweep: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_a_bad_sweep_file_names_every_field(tmp_path: Path) -> None:
    bad = {"space": {"lr": {"loguniform": [1e-2, 1e-4]}, "hiden_dim": {"choice": [8]}, "epochs": {"grid": [1, 2]},
                     "latent_dim": {"choice": [8, 0]}, "kl_weight": {"uniform": [0.1, 1.0], "choice": [1.0]}},
           "trails": 3}
    with pytest.raises(ConfigError) as syntax:
        load_sweep(write_sweep(tmp_path / "a.yaml", bad), "vae", VAEConfig())
    assert any(p.startswith("space.lr: ") and "below high" in p for p in syntax.value.problems)
    assert any(p.startswith("space.kl_weight: ") and "exactly one" in p for p in syntax.value.problems)
    assert any(p.startswith("trails: ") for p in syntax.value.problems)
    del bad["trails"], bad["space"]["lr"], bad["space"]["kl_weight"]
    with pytest.raises(ConfigError) as keys:
        load_sweep(write_sweep(tmp_path / "b.yaml", {**bad, "objective": "test_noise_loss"}), "vae", VAEConfig())
    problems = "\n".join(keys.value.problems)
    assert "space.hiden_dim: not a training key of train.vae" in problems
    assert "space.epochs: not sweepable" in problems
    assert "space.latent_dim: 0: Input should be greater than 0" in problems
    assert "objective: test_noise_loss is a ddpm score" in problems


def test_each_kind_of_space_becomes_its_tune_sampler() -> None:
    from ray.tune.search.sample import Categorical, Float

    sweep = SweepConfig.model_validate({"space": {"lr": {"loguniform": [1e-4, 1e-2]}, "kl_weight": {"uniform": [0.5, 2]},
                                                  "latent_dim": {"choice": [4, 8]}, "hidden_dim": {"grid": [8, 16]}}})
    space = tune_space(sweep)
    assert space["hidden_dim"] == {"grid_search": [8, 16]}
    assert isinstance(space["latent_dim"], Categorical) and space["latent_dim"].categories == [4, 8]
    lr, kl = space["lr"], space["kl_weight"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-2) and "LogUniform" in type(lr.sampler).__name__
    assert isinstance(kl, Float) and (kl.lower, kl.upper) == (0.5, 2) and type(kl.sampler).__name__.strip("_") == "Uniform"


def test_a_trial_config_and_the_best_overlay_are_params_the_pipeline_accepts(tmp_path: Path) -> None:
    trial = trial_config(GANConfig(), {"lr": 1e-3, "hidden_dim": 64}, steps=50)
    assert (trial.lr, trial.hidden_dim, trial.steps, trial.epochs) == (1e-3, 64, 50, None)
    overlay = best_overlay("gan", {"lr": 0.00031622776601683794, "r1_gamma": 1.0})
    cfg = load_config(ROOT / "params.yaml", overlay_overrides(overlay))
    assert cfg.train["gan"].lr == 0.00031622776601683794 and cfg.train["gan"].r1_gamma == 1.0
    assert cfg.train["gan"].epochs == load_config(ROOT / "params.yaml").train["gan"].epochs  # its own length
    assert dvc_command(overlay) == "dvc exp run -S ++train.gan.lr=0.00031622776601683794 -S ++train.gan.r1_gamma=1.0"


def test_dvc_adopts_the_best_overlay_through_the_printed_line(tmp_path: Path) -> None:
    """The printed line, queued in a git + DVC project: DVC takes every value, also one that
    params.yaml leaves to its default (``r1_gamma``; a plain ``-S key=value`` is refused for it)."""
    import json
    import shlex

    repo = git_project(tmp_path / "repo")
    overlay = best_overlay("gan", {"lr": 0.00031622776601683794, "r1_gamma": 1.0})
    dvc = str(Path(sys.executable).parent / "dvc")
    line = shlex.split(dvc_command(overlay))
    run_command([dvc, *line[1:], "--queue"], repo, tracking="isolated", env={"DVC_NO_ANALYTICS": "1"})
    shown = json.loads(run_command([dvc, "exp", "show", "--json"], repo, tracking="isolated").stdout)
    queued = [rev["data"]["params"]["params.yaml"]["data"] for commit in shown for exp in commit.get("experiments") or []
              for rev in exp["revs"]]
    assert len(queued) == 1 and queued[0]["train"]["gan"]["lr"] == 0.00031622776601683794
    assert queued[0]["train"]["gan"]["r1_gamma"] == 1.0


# --------------------------------------------------------------------------- real sweeps
@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny smoke project with its classifier (trained in-process: the sweeps need its features)."""
    folder = make_project(tmp_path_factory.mktemp("sweep-project"))
    run_stage(folder, "classifier", "--plain", tracking="local")
    return folder


def mlflow_client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def sweep_runs(project: Path) -> tuple[object, list]:
    """The sweep experiment's parent run and its child runs."""
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = [r for r in runs if PARENT_RUN_TAG not in r.data.tags]
    assert len(parents) <= 1, parents
    return (parents[0] if parents else None), [r for r in runs if PARENT_RUN_TAG in r.data.tags]


def sweep_process(project: Path, ray_address: str, *args: str) -> subprocess.Popen:
    """The sweep command as ``run_stage`` starts it, but in the background (to be killed)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", RAY_NODE_IP_ADDRESS=HEAD_IP, RAY_AUTH_MODE="token",
               RAY_ADDRESS=ray_address)
    log = open(project / "killed-sweep.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "pipelines.sweep", *args], cwd=project, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_first_finished_trial(project: Path, driver: subprocess.Popen, timeout_s: float = 240) -> tuple[list, int]:
    """SIGKILL the sweep's driver as soon as one trial's run is FINISHED; returns the FINISHED runs
    and the most trial runs seen RUNNING at once until then."""
    client, deadline = mlflow_client(project), time.monotonic() + timeout_s
    finished: list = []
    most_running = 0
    try:
        while not finished and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            if experiment is not None:
                runs = [r for r in client.search_runs([experiment.experiment_id]) if PARENT_RUN_TAG in r.data.tags]
                most_running = max(most_running, sum(r.info.status == "RUNNING" for r in runs))
                finished = [r for r in runs if r.info.status == "FINISHED"]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and only what it started in its own session
        driver.wait()
    return finished, most_running


@pytest.mark.slow
def test_a_sweep_killed_midway_resumes_records_every_trial_once_and_writes_a_valid_overlay(
        project: Path, ray_address: str) -> None:
    """4 trials, 2 at a time, 2 of them failing; the driver is killed when the first trial has
    finished, then the same command resumes the sweep to its end."""
    write_sweep(project / "sweeps" / "vae.yaml", SWEEP)
    args = ["--model", "vae", *SETTINGS]
    driver = sweep_process(project, ray_address, *args)
    finished, most_running = kill_after_first_finished_trial(project, driver)
    log = (project / "killed-sweep.log").read_text()
    assert driver.returncode == -signal.SIGKILL and finished, log  # killed midway, one trial done
    assert most_running == 2, log  # max_concurrent: two trials side by side, never more
    assert all(PARENT_RUN_TAG in run.data.tags for run in finished)

    done = run_stage(project, "sweep", *args, env={"RAY_ADDRESS": ray_address}, tracking="local")
    assert "(resumed)" in done.stdout and "4 trials (2 failed)" in done.stdout, done.stdout
    parent, children = sweep_runs(project)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials_failed"] == 2
    assert len(children) == 4 and {c.data.tags[PARENT_RUN_TAG] for c in children} == {parent.info.run_id}
    assert len({c.data.tags[TRIAL_TAG] for c in children}) == 4  # no trial recorded twice
    client = mlflow_client(project)
    for before in finished:  # not trained again: its run untouched, each step logged once
        after = client.get_run(before.info.run_id)
        assert after.info.end_time == before.info.end_time and after.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(before.info.run_id, "train/loss")) == [4, 8]
    by_status = {s: [c for c in children if c.info.status == s] for s in ("FINISHED", "FAILED")}
    assert [float(c.data.params["config.lr"]) for c in by_status["FAILED"]] == [1e40, 1e40]  # diverged
    for child in by_status["FINISHED"]:
        assert float(child.data.params["config.lr"]) == 3e-3 and child.data.params["config.steps"] == "8"
        assert 0 < child.data.metrics["eval/fid"] == child.data.metrics["sweep/objective"]
        assert 0 <= child.data.metrics["eval/recall"] <= 1 and "eval/test_elbo" in child.data.metrics
        # per-step losses (log_every 4); a trial cut off by the kill logs its steps again when it reruns
        losses = client.get_metric_history(child.info.run_id, "train/loss")
        assert {m.step for m in losses} == {4, 8} and all(math.isfinite(m.value) for m in losses)

    assert sorted(int(c.data.params["config.hidden_dim"]) for c in by_status["FINISHED"]) == [8, 16]
    best = min(by_status["FINISHED"], key=lambda c: c.data.metrics["eval/fid"])
    assert parent.data.metrics["sweep/best_objective"] == best.data.metrics["eval/fid"]
    overlay = yaml.safe_load((project / "sweeps" / "vae-best.yaml").read_text())
    assert overlay == {"train": {"vae": {"hidden_dim": int(best.data.params["config.hidden_dim"]), "lr": 3e-3}}}
    cfg = load_config(project / "params.yaml", overlay_overrides(overlay))
    assert cfg.train["vae"].lr == 3e-3 and cfg.train["vae"].epochs == load_config(project / "params.yaml").train["vae"].epochs
    assert dvc_command(overlay) in done.stdout
    assert parent.data.tags["sweep.best_trial"] == best.data.tags[TRIAL_TAG]
    assert {"vae-best.yaml", "trials.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
