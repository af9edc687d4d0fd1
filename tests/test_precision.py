"""Precision by capability: ``auto`` resolves in the worker, bf16 without native support is an
error, and the precision that ran is recorded (checkpoint, worker record, MLflow params)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from local_jobs import local_session, random_images, vae_job

from components.data.loader import TensorLoader
from components.distributed.jobs import Tracking
from components.distributed.train_jobs import train_job
from components.models import FAMILIES
from components.training import precision
from components.training.checkpoint import load_checkpoint
from components.training.loop import configure_runtime, fit
from components.training.precision import (
    CPU_BF16_ENV,
    PrecisionError,
    cpu_has_bf16,
    precision_reason,
    resolve_precision,
)
from tests.tiny_models import assert_same_state, build, flat_state


@pytest.mark.parametrize(("native", "want"), [("1", "bf16"), ("0", "fp32")])
def test_auto_follows_the_cpu_capability_and_fp32_stays_fp32(monkeypatch, native, want):
    monkeypatch.setenv(CPU_BF16_ENV, native)
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.parametrize(("flags", "want"), [
    ("fpu sse avx512f avx512_bf16 avx512_vnni", True),
    ("fpu sse amx_bf16 amx_tile", True),
    ("fpu sse avx2 avx512f avx512_vnni", False),  # AVX-512 without its bf16 extension
])
def test_the_capability_is_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, want):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert cpu_has_bf16() is want
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")  # no /proc (not Linux): no claim
    assert cpu_has_bf16() is False


def test_a_bad_override_is_an_error(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match=f"{CPU_BF16_ENV}='yes': expected 0 or 1"):
        cpu_has_bf16()


def test_explicit_bf16_on_a_cpu_without_it_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    local = local_session(tmp_path)
    with pytest.raises(PrecisionError, match="neither AVX512-BF16 nor AMX-BF16"):
        train_job(vae_job(precision="bf16"), local)
    assert not any(tmp_path.iterdir())  # not one step, not one checkpoint


@pytest.mark.parametrize(("native", "want"), [("1", "bf16"), ("0", "fp32")])
def test_the_precision_that_ran_is_recorded(monkeypatch, tmp_path, native, want):
    """``auto`` in the config; what the worker resolved in the checkpoint, the worker record and the run's params."""
    from components import tracking

    monkeypatch.setenv(CPU_BF16_ENV, native)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "vae", {"stage": "train@vae"}, {"config.precision": "auto"})
    local = local_session(tmp_path / "ckpt")
    train_job(vae_job(tracking=Tracking(uri, run_id, system_metrics=False)), local)
    with local.latest_checkpoint() as folder:
        payload = load_checkpoint(folder)
        worker = json.loads((folder / "worker-000.json").read_text())
    assert payload["config"]["precision"] == "auto"
    assert payload["precision"] == worker["precision"] == want
    params = tracking.client(uri).get_run(run_id).data.params
    assert params["runtime.precision"] == want and params["config.precision"] == "auto"


@pytest.mark.parametrize(("requested", "used", "device", "env", "want"), [
    ("auto", "fp32", "cpu", None, "auto: no avx512_bf16 or amx_bf16 on this CPU"),
    ("auto", "bf16", "cpu", None, "auto: this CPU computes bf16 natively"),
    ("auto", "fp32", "cpu", "0", f"auto, {CPU_BF16_ENV}=0"),
    ("fp32", "fp32", "cpu", "1", "asked: fp32"),
    ("bf16", "bf16", "cpu", None, "asked: bf16"),
    ("auto", "fp32", "cuda", None, "auto: no native bf16 on this device"),
])
def test_the_reason_names_what_chose_the_precision(monkeypatch, requested, used, device, env, want):
    if env is None:
        monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(CPU_BF16_ENV, env)
    assert precision_reason(requested, used, device) == want


def test_a_run_on_a_cpu_without_bf16_says_so(monkeypatch, tmp_path, capsys):
    """The stage's first line of a slow fp32 run tells the reader that the CPU chose fp32, not the config."""
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    train_job(vae_job(), local_session(tmp_path / "ckpt"))
    assert "precision fp32 (auto: no avx512_bf16 or amx_bf16 on this CPU)" in capsys.readouterr().out


def bf16_fit(family: str) -> torch.nn.Module:
    images, labels = random_images(64)
    model = build(family)
    configure_runtime(model, "bf16")
    fit(model, TensorLoader(images, labels, 16, seed=3), epochs=2, seed=3, log_every=4)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_training_is_deterministic(monkeypatch, family):
    """Same machine, config and seed: the same bits with bf16 too (and not fp32's bits: autocast ran)."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")  # a CPU without it emulates bf16: slower, as deterministic
    a, b = bf16_fit(family), bf16_fit(family)
    assert a.precision == "bf16" and a.step == 8
    assert_same_state(a, b)
    images, labels = random_images(64)
    fp32 = build(family)
    fit(fp32, TensorLoader(images, labels, 16, seed=3), epochs=2, seed=3, log_every=4)
    differs = [k for k, v in flat_state(fp32).items() if not torch.equal(v, flat_state(a)[k])]
    assert differs, "bf16 and fp32 gave the same weights: autocast did not run"


def test_compiled_kernels_are_cached_under_the_project(monkeypatch, tmp_path):
    """``compile`` keeps inductor's kernels in ``<project>/.cache/torchinductor``, in this process and in
    every Ray worker (the driver forwards the path), so a second run does not compile again."""
    from components.distributed.runner import worker_env

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert worker_env()["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "torchinductor")
    configure_runtime(build("vae"), "fp32")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # eager runs leave it alone
    configure_runtime(build("vae"), "fp32", compile_mode="default")  # wraps lazily: compiles at the first step
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # a user's own setting wins
    assert worker_env()["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"
