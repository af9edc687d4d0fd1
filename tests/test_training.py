"""The plain loop, the loader and checkpoints: no Ray, no MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from local_jobs import local_session, random_images, vae_job

from components.config import GANConfig, VAEConfig
from components.data.loader import TensorLoader
from components.data.spec import DataSpec
from components.distributed.datasets import ArraySource
from components.distributed.jobs import Tracking, TrainJob
from components.distributed.session import LocalSession
from components.distributed.train_jobs import (
    FAULT_MARKER_ENV,
    FAULT_STEP_ENV,
    HISTORY_FILE,
    FaultInjection,
    train_job,
)
from components.models import build_model
from components.models.vae import VAE
from components.training.checkpoint import (
    CHECKPOINT_FILE,
    checkpoint_payload,
    load_checkpoint,
    model_from_checkpoint,
    parameter_digest,
    save_checkpoint,
)
from components.training.loop import (
    Callback,
    NonFiniteLossError,
    RunLength,
    ShortRunWarning,
    fit,
    run_length,
    warn_if_short,
)

SPEC = DataSpec()
ROOT = Path(__file__).resolve().parents[1]


def test_loader_covers_its_rows_and_reshuffles_every_epoch():
    images, labels = random_images(100)
    loader = TensorLoader(images, labels, batch_size=10, seed=3)
    first = loader.epoch_indices()
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, TensorLoader(images, labels, batch_size=10, seed=3).epoch_indices())  # seeded
    loader.set_epoch(1)
    assert not torch.equal(first, loader.epoch_indices())
    batch, batch_labels = next(iter(loader))
    assert batch.dtype == torch.float32 and batch.shape == (10, 1, 28, 28)
    assert batch.min() >= -1 and batch.max() <= 1 and batch_labels.dtype == torch.int64


class EveryEpochCheckpoint(Callback):
    """Writes ``<folder>/checkpoint.pt`` after every epoch."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_epoch_end(self, model, stats):
        save_checkpoint(self.folder / CHECKPOINT_FILE, checkpoint_payload(model, name="gan", epoch=stats.epoch + 1))


class Poison(Callback):
    """Makes the generator's weights NaN after the first epoch."""

    def on_epoch_end(self, model, stats):
        if stats.epoch == 0:
            with torch.no_grad():
                for p in model.net("generator").parameters():
                    p.fill_(math.nan)


def test_nan_guard_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    images, labels = random_images(256)
    model = build_model(GANConfig(epochs=3, batch_size=64, hidden_dim=16, latent_dim=8), SPEC)
    loader = TensorLoader(images, labels, batch_size=64)
    saver = EveryEpochCheckpoint(tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        fit(model, loader, epochs=3, seed=0, log_every=2, callbacks=[saver, Poison()])
    payload = load_checkpoint(tmp_path)
    assert payload["epoch"] == 1  # epoch 1's checkpoint, written before the poison
    restored = model_from_checkpoint(payload)
    assert all(torch.isfinite(p).all() for net in restored.networks().values() for p in net.parameters())


def epochs_in_history(done: LocalSession) -> list[tuple[int, int]]:
    """``(epoch, step)`` of each finished epoch in the newest checkpoint's history.json (what the train
    stage reads): a resumed run that re-ran or skipped an epoch would show it."""
    with done.latest_checkpoint() as folder:
        history = json.loads((folder / HISTORY_FILE).read_text())
    return [(h["epoch"], h["step"]) for h in history if "epoch" in h]


def test_plain_train_job_resumes_to_the_uninterrupted_weights(tmp_path):
    uninterrupted = local_session(tmp_path / "a")
    train_job(vae_job(epochs=3), uninterrupted)
    interrupted = local_session(tmp_path / "b")
    train_job(vae_job(epochs=2), interrupted)  # stops after epoch 2, as if killed there
    train_job(vae_job(epochs=3), interrupted)  # re-run: resumes from the epoch-2 checkpoint
    assert epochs_in_history(interrupted) == epochs_in_history(uninterrupted) == [(1, 3), (2, 6), (3, 9)]
    with uninterrupted.latest_checkpoint() as a, interrupted.latest_checkpoint() as b:
        want, got = model_from_checkpoint(load_checkpoint(a)), model_from_checkpoint(load_checkpoint(b))
    assert got.step == want.step == 9
    assert parameter_digest(got) == parameter_digest(want)


def test_fault_injection_exists_only_when_its_variables_are_set(tmp_path, monkeypatch):
    monkeypatch.delenv(FAULT_STEP_ENV, raising=False)
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "fired"))
    assert FaultInjection.from_env() is None
    monkeypatch.setenv(FAULT_STEP_ENV, "3")
    fault = FaultInjection.from_env()
    assert fault is not None
    fault.on_log(None, 2, {})
    with pytest.raises(RuntimeError, match="injected fault at step 3"):
        fault.on_log(None, 3, {})
    fault.on_log(None, 4, {})  # fired once: the marker stays
    assert (tmp_path / "fired").read_text() == "3"


def test_plain_run_job_returns_the_sent_results_not_the_last_checkpoint(tmp_path):
    from components.config import RayConfig
    from components.distributed.runner import run_job

    def body(job: str, session: LocalSession) -> None:
        for name in ("checkpoint", job):
            (tmp_path / name).mkdir()
            (tmp_path / name / f"{name}.txt").write_text(name)
        session.report({"epoch": 1}, tmp_path / "checkpoint")
        session.send_results(tmp_path / job)

    out = run_job(body, "results", cfg=RayConfig(storage_path=str(tmp_path / "runs")), name="r", plain=True)
    assert sorted(p.name for p in out.iterdir()) == ["results.txt"]
    assert not (tmp_path / "runs" / "r").exists()  # the finished run is deleted


class StoreAtCheckpoints(LocalSession):
    """Records, at every reported checkpoint, the epochs the MLflow store already holds."""

    def __init__(self, folder, uri: str, run_id: str):
        images, labels = random_images(192)
        super().__init__(folder, device="cpu", datasets={"train": ArraySource(images, labels)})
        self.uri, self.run_id, self.stored_at_checkpoint = uri, run_id, []

    def report(self, metrics, checkpoint_dir=None) -> None:
        if checkpoint_dir is not None:
            from components import tracking

            history = tracking.client(self.uri).get_metric_history(self.run_id, "train/epoch")
            self.stored_at_checkpoint.append((metrics["epoch"], sorted(int(m.value) for m in history)))
        super().report(metrics, checkpoint_dir)


def test_what_was_logged_before_a_checkpoint_is_stored_before_it_is_reported(tmp_path):
    """A run resumed from a checkpoint never logs the epochs before it again: the rank-0 logger
    (batched every 2 s) is flushed first, so a worker killed just after a checkpoint loses no epoch."""
    from components import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "vae", {"stage": "train@vae"}, {"p": 1})
    on_store = StoreAtCheckpoints(tmp_path / "ckpt", uri, run_id)
    train_job(vae_job(epochs=3, tracking=Tracking(uri, run_id, system_metrics=False)), on_store)
    assert on_store.stored_at_checkpoint == [(1, [1]), (2, [1, 2]), (3, [1, 2, 3])]


def test_same_seed_same_weights_different_seed_different():
    def train(seed: int) -> str:
        images, labels = random_images(256)
        model = build_model(GANConfig(seed=seed, batch_size=64, hidden_dim=16, latent_dim=8), SPEC)
        fit(model, TensorLoader(images, labels, 64, seed=seed), epochs=2, seed=seed, log_every=100)
        return parameter_digest(model)

    assert train(1) == train(1)
    assert train(1) != train(2)


def test_loop_reports_finite_epoch_losses_and_speed():
    images, labels = random_images(256)
    model = build_model(VAEConfig(batch_size=64, hidden_dim=8, latent_dim=4), SPEC)
    history = fit(model, TensorLoader(images, labels, 64), epochs=2, seed=0, log_every=2)
    assert [s.steps for s in history] == [4, 4]
    assert all(math.isfinite(v) for s in history for v in s.losses.values())
    assert history[-1].losses["loss"] < history[0].losses["loss"]
    assert history[0].images_per_s > 0
    # the training thread's own CPU time: positive, and no more than the epoch's wall time (one torch thread)
    assert all(0 < s.cpu_seconds <= s.seconds * 1.01 + 0.01 for s in history)


def test_sampling_a_loaded_model_builds_no_optimiser():
    """Optimisers are built on first training use: a sample/evaluate worker skips torch._dynamo's import (~2 s)."""
    code = """
import sys, torch
from components.config import GANConfig
from components.models import build_model
from components.data.spec import DataSpec
from components.training.checkpoint import checkpoint_payload, model_from_checkpoint
spec = DataSpec(channels=1, height=28, width=28, num_classes=10)
trained = build_model(GANConfig(hidden_dim=8, latent_dim=4), spec)
payload = checkpoint_payload(trained, name="g", epoch=0)
model = model_from_checkpoint(payload)
model.sample(4, generator=torch.Generator().manual_seed(0))
assert "torch._dynamo" not in sys.modules, "sampling built an optimiser"
model.train_step(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
assert set(model.optimizers) == {"generator", "discriminator"}
saved = checkpoint_payload(model, name="g", epoch=1)["state"]["optimizers"]
reloaded = model_from_checkpoint(checkpoint_payload(model, name="g", epoch=1))
# loaded, never stepped: its checkpoint still carries the optimiser state it was given
again = checkpoint_payload(reloaded, name="g", epoch=1)["state"]["optimizers"]
assert saved["generator"]["state"] and set(again) == set(saved)
assert torch.equal(again["generator"]["state"][0]["exp_avg"], saved["generator"]["state"][0]["exp_avg"])
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


# ---------------------------------------------------------------------------- a length in optimiser steps
def steps_job(steps: int, **fields) -> TrainJob:
    """``job`` trained by ``steps`` (192 rows at batch 64: 3 steps an epoch)."""
    config = VAEConfig(steps=steps, batch_size=64, hidden_dim=8, latent_dim=4, log_every=1, **fields)
    return dataclasses.replace(vae_job(epochs=1), config=config)


def test_fit_stops_at_max_steps_mid_epoch():
    images, labels = random_images(256)  # 256 rows at batch 64: 4 steps an epoch
    model = build_model(VAEConfig(steps=10, batch_size=64, hidden_dim=8, latent_dim=4), SPEC)
    loader = TensorLoader(images, labels, 64)
    length = run_length(model.config.epochs, model.config.steps, len(loader))
    assert length == RunLength(epochs=3, steps=10)
    history = fit(model, loader, epochs=length.epochs, seed=0, log_every=3, max_steps=length.steps)
    assert model.step == 10 and [s.steps for s in history] == [4, 4, 2]
    assert run_length(5, None, 4) == RunLength(epochs=5, steps=20)  # epochs decide: whole epochs, as before


def test_a_run_by_steps_resumes_to_the_same_step_and_weights(tmp_path, monkeypatch):
    uninterrupted = local_session(tmp_path / "a")
    train_job(steps_job(8), uninterrupted)
    monkeypatch.setenv(FAULT_STEP_ENV, "7")  # in epoch 3 (steps 7-9), after the epoch-2 checkpoint at step 6
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "fired"))
    interrupted = local_session(tmp_path / "b")
    with pytest.raises(RuntimeError, match="injected fault at step 7"):
        train_job(steps_job(8), interrupted)
    train_job(steps_job(8), interrupted)  # the same job again: resumes at epoch 2, step 6
    assert epochs_in_history(interrupted) == epochs_in_history(uninterrupted) == [(1, 3), (2, 6), (3, 8)]  # last partial
    with uninterrupted.latest_checkpoint() as a, interrupted.latest_checkpoint() as b:
        want, got = load_checkpoint(a), load_checkpoint(b)
        assert json.loads((b / "worker-000.json").read_text())["step"] == 8
    assert want["state"]["step"] == got["state"]["step"] == 8 and want["epoch"] == got["epoch"] == 3
    assert parameter_digest(model_from_checkpoint(got)) == parameter_digest(model_from_checkpoint(want))


def test_every_rank_stops_at_the_same_step():
    """DDP: per-rank step counts over loaders of equal length (Ray Data's split is even up to a row),
    so no rank is left waiting at an all-reduce."""
    images, labels = random_images(101)  # two ranks' shares, 51 and 50 rows: 5 batches of 10 on each
    steps = []
    for rank, share in enumerate((slice(0, 51), slice(51, 101))):
        model = build_model(VAEConfig(steps=7, batch_size=10, hidden_dim=8, latent_dim=4), SPEC)
        loader = TensorLoader(images[share], labels[share], 10, seed=rank)
        length = run_length(None, 7, len(loader))
        fit(model, loader, epochs=length.epochs, seed=0, rank=rank, log_every=100, max_steps=length.steps)
        steps.append(model.step)
    assert steps == [7, 7]


def test_a_short_run_warns_once_at_the_start_and_a_long_one_does_not(tmp_path, monkeypatch):
    with pytest.warns(ShortRunWarning, match=r"vae: 4 optimiser steps per worker \(2 epochs\), fewer than the ~500") as got:
        train_job(steps_job(4), local_session(tmp_path / "short"))
    assert len([w for w in got if w.category is ShortRunWarning]) == 1
    monkeypatch.setattr(VAE, "min_useful_steps", 4)  # 4 steps are enough now: the same path stays quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortRunWarning)
        train_job(steps_job(4), local_session(tmp_path / "long"))


@pytest.mark.parametrize(("family", "steps", "warns"), [
    ("gan", 55, True),  # the 1,500-image folder that learned nothing
    ("gan", 1_170, False), ("dcgan", 585, True), ("dcgan", 1_872, False),  # the default's lengths
    ("vae", 702, False), ("ddpm", 702, False), ("ddpm", 12, True),
])
def test_the_short_run_thresholds_against_the_measured_runs(family, steps, warns):
    from tests.tiny_models import build

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        warn_if_short(build(family), RunLength(epochs=1, steps=steps))
    assert [w.category for w in got] == ([ShortRunWarning] if warns else [])
