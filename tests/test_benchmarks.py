"""The speed benchmarks run end to end in --quick mode and report numbers (never checked for value)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.common import FAMILIES
from benchmarks.train_speed import fuse_optimizers, parse_candidate
from components.config import GANConfig
from components.data.loader import TensorLoader
from components.data.spec import DataSpec
from components.distributed.malloc import MALLOC_SETTINGS
from components.models import build_model
from components.models.base import TrainableModel
from components.training.loop import Callback, fit

ROOT = Path(__file__).resolve().parents[1]


def run_quick(module: str, *args: str, table: str = "| family") -> dict:
    """Run ``python -m module --quick`` on one CPU thread; the last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", *MALLOC_SETTINGS):  # the benchmark starts and uses its own
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", module, "--quick", "--device", "cpu", "--threads", "1", *args],
                         check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{module} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in the output:\n{run.stdout[-3000:]}"
    assert table in run.stdout  # the Markdown table was printed too
    return json.loads(lines[-1])


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_train_speed_quick_reports_every_variant_for_every_family():
    """(a) and (b) for every family; (c), a Ray Train job each, for one: its machinery
    (``run_job(train_job)``) is the same for every family, whose train stages all run on Ray in
    tests/test_pipeline_e2e.py. Four Ray jobs fewer: ~2.5 minutes of CI. The first run keeps
    glibc's malloc defaults; the second trains (a) and (b) under the workers' settings (the default)."""
    result = run_quick("benchmarks.train_speed", "--no-stage", "--allocator", "glibc")
    assert result["benchmark"] == "train_speed" and result["device"] == "cpu" and result["threads"] == 1
    assert set(result["families"]) == set(FAMILIES)
    assert result["malloc"] == {}
    one = run_quick("benchmarks.train_speed", "--families", "vae")
    assert set(one["families"]) == {"vae"}
    assert one["malloc"] == MALLOC_SETTINGS  # the process re-ran itself with the Ray workers' settings
    stage = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("mlflow") is not None
    for family, row in [*result["families"].items(), *one["families"].items()]:
        for key in ("a", "b", "b_over_a", "b_over_a_cpu_time"):
            assert positive(row[key]), (family, key, row[key])
        assert row["b_settings"] == "fp32"  # the CPU default candidate
        assert len(row["a_rates"]) == result["repeats"]  # the warm-up epoch is not among the rates
    assert not any("c" in row for row in result["families"].values())  # --no-stage
    if stage:
        row = one["families"]["vae"]
        for key in ("c", "c_over_b", "c_over_b_cpu_time", "c_stage_overhead_s", "c_wall_s"):
            assert positive(row[key]), ("vae", key, row[key])
        assert 0 < row["c_on_cpu"] <= 1.05  # the training thread's CPU time over the epoch's wall time
        assert len(row["c_rates"]) == one["repeats"]  # epochs 2.. of the run's history
        assert one["ray_worker_threads"] == 1  # (c) ran with the threads (a) and (b) had


def test_sample_speed_quick_reports_every_family_and_the_ddpm_tradeoff():
    result = run_quick("benchmarks.sample_speed")
    assert set(result["families"]) == set(FAMILIES)
    for family, row in result["families"].items():
        assert positive(row["images_per_s"]), family
    trade = result["ddpm_tradeoff"]
    assert list(trade["samplers"]) == [f"ancestral-{trade['timesteps']}", "ddim-20", "ddim-5"]
    for name, row in trade["samplers"].items():
        assert positive(row["images_per_s"]) and math.isfinite(row["fid"]) and row["fid"] > -1e-6, name
    assert math.isfinite(trade["floor_fid"]) and 0 <= trade["classifier_accuracy"] <= 1


def test_candidates_map_to_config_fields():
    assert parse_candidate("fp32") == {"precision": "fp32", "compile": "off"}
    assert parse_candidate("bf16+compile") == {"precision": "bf16", "compile": "default"}
    assert parse_candidate("bf16+cudagraphs") == {"precision": "bf16", "compile": "reduce-overhead"}
    assert parse_candidate("bf16+cl") == {"precision": "bf16", "compile": "off", "channels_last": True}
    with pytest.raises(SystemExit, match="unknown candidate"):
        parse_candidate("fp16")


def test_fuse_optimizers_keeps_hyperparameters():
    model = build_model(GANConfig(hidden_dim=8, latent_dim=4, lr=3e-4, adam_betas=(0.5, 0.9)), DataSpec())
    before = {n: [p for g in o.param_groups for p in g["params"]] for n, o in model.optimizers.items()}
    fuse_optimizers(model)
    for name, opt in model.optimizers.items():
        assert opt.defaults["fused"] and opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.5, 0.9)
        assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in before[name]]


class Scripted(TrainableModel):
    """Returns losses ``a = step`` and ``b = 2 * step``, so the loop's means can be checked exactly.

    Args:
        drop_b_at: from this step on only ``a`` is returned (a model breaking the loop's contract).
    """

    family = "scripted"
    network_names = ()

    def __init__(self, drop_b_at: int | None = None):
        super().__init__(GANConfig(), DataSpec(), "cpu")
        self.drop_b_at = drop_b_at

    def configure_optimizers(self):
        return {}

    def train_step(self, images, labels):
        self.step += 1
        value = torch.tensor(float(self.step))
        if self.drop_b_at is not None and self.step >= self.drop_b_at:
            return {"a": value}
        return {"a": value, "b": 2 * value}


class Logged(Callback):
    def __init__(self):
        self.logs = []

    def on_log(self, model, step, losses):
        self.logs.append((step, losses))


def test_loop_means_per_log_window_and_epoch_are_exact():
    """The loop keeps loss sums as one device tensor (a speed change made with the benchmark)."""
    images, labels = np.zeros((12, 1, 28, 28), np.uint8), np.zeros(12, np.int64)
    logged = Logged()
    history = fit(Scripted(), TensorLoader(images, labels, batch_size=4), epochs=2, seed=0, log_every=2,
                  callbacks=[logged])
    # steps 1..6, three an epoch; windows restart with each epoch: logs at step 2 over (1, 2),
    # at step 4 over (4,) alone (step 3 ended epoch 1), at step 6 over (5, 6)
    assert logged.logs == [(2, {"a": 1.5, "b": 3.0}), (4, {"a": 4.0, "b": 8.0}), (6, {"a": 5.5, "b": 11.0})]
    assert [h.losses for h in history] == [{"a": 2.0, "b": 4.0}, {"a": 5.0, "b": 10.0}]


def test_loop_refuses_a_changing_set_of_losses():
    images, labels = np.zeros((16, 1, 28, 28), np.uint8), np.zeros(16, np.int64)
    with pytest.raises(ValueError, match="set of losses must not change"):
        fit(Scripted(drop_b_at=3), TensorLoader(images, labels, batch_size=2), epochs=1, seed=0, log_every=2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray")
def test_stage_overhead_quick_reports_every_way():
    result = run_quick("benchmarks.stage_overhead", "--families", "gan")
    ways = result["families"]["gan"]
    assert set(ways) == {"fit", "job, no Ray", "Ray task", "Ray Train, no MLflow", "Ray Train + MLflow"}
    for way, row in ways.items():
        assert positive(row["images_per_s"]) and len(row["rates"]) == result["repeats"], way
    assert ways["fit"]["vs_fit"] == 1.0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray")
def test_stage_overhead_fixed_cost_times_every_piece_of_a_job():
    result = run_quick("benchmarks.stage_overhead", "--fixed-cost", "--repeats", "1", "--workers", "1",
                       "--settings", "defaults", table="| setting")
    assert set(result["jobs"]) == {"defaults, no data", "defaults, one dataset", "defaults, one dataset, streaming_split"}
    for key, row in result["jobs"].items():
        pieces = ("fit -> worker process", "worker process -> body", "body", "body -> fit returns")
        assert all(row[p] >= 0 for p in pieces) and positive(row["job"]), (key, row)
        assert sum(row[p] for p in pieces) == pytest.approx(row["job"], abs=0.05), key  # the pieces tile the job
    assert all(positive(seconds) for seconds in result["driver_imports"].values())
    whats = [what for _, _, what in result["timeline"]]
    assert "rank0: worker process starts" in whats and "rank0: the body runs" in whats
    assert whats[-1] == "fit() returns" and any("RayTrainWorker" in what for what in whats)


# --------------------------------------------------------------------------- benchmarks.peers (diffusers)
PEER_SCRIPT = ROOT / "benchmarks" / "diffusers_peer.py"


def test_chunks_run_fit_in_short_rounds_through_whole_epochs():
    """The project side of ``peers``: rounds of k batches continue where the last stopped, epoch after epoch."""
    from benchmarks.peers import Chunks

    images = np.arange(10, dtype=np.uint8).repeat(28 * 28).reshape(10, 1, 28, 28)
    loader = TensorLoader(images, np.zeros(10, np.int64), batch_size=2, seed=3)
    chunks = Chunks(loader, 3)
    seen = [int(b[0][i, 0, 0, 0].add(1).mul(127.5).round()) for _ in range(4) for b in chunks for i in range(2)]
    epoch = lambda e: (loader.set_epoch(e), [int(i) for i in loader.epoch_indices()])[1]
    assert len(chunks) == 3 and chunks.batch_size == 2
    assert seen[:10] == epoch(0) and seen[10:20] == epoch(1) and seen[20:] == epoch(2)[:4]


def test_peer_script_refuses_bad_input_in_one_line(tmp_path):
    """``diffusers_peer.py``'s argument contract, run by this (diffusers-free) interpreter."""
    base = [sys.executable, str(PEER_SCRIPT), "--batch-size", "4", "--lr", "1e-3", "--betas", "0.9", "0.999",
            "--block-out-channels", "12", "28", "28"]
    missing = subprocess.run([*base, "--data", str(tmp_path / "none.npy")], check=False, capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.strip() == f"error: --data {tmp_path / 'none.npy'} does not exist"
    np.save(tmp_path / "train.npy", np.zeros((4, 1, 28, 28), np.uint8))
    run = subprocess.run([*base, "--data", str(tmp_path / "train.npy")], check=False, capture_output=True, text=True)
    if importlib.util.find_spec("diffusers") is None:  # the project's venv never has it
        assert run.returncode != 0 and run.stderr.strip().startswith("error: diffusers is not installed")
    no_args = subprocess.run([sys.executable, str(PEER_SCRIPT)], check=False, capture_output=True, text=True)
    assert no_args.returncode == 2 and "required" in no_args.stderr


@pytest.fixture(scope="session")
def peer_venv() -> Path:
    """The peer venv, made once (about 1.5 min from PyPI) where the benchmark keeps it."""
    from benchmarks.peers import DEFAULT_VENV, ensure_venv

    venv = Path(os.environ.get("GENMODELS_PEERS_VENV", DEFAULT_VENV))
    ensure_venv(venv)
    return venv


@pytest.mark.slow
def test_peers_quick_compares_with_diffusers_in_one_run(peer_venv):
    result = run_quick("benchmarks.peers", "--venv", str(peer_venv), table="| measure")
    params = result["parameters"]
    assert result["peer_info"]["diffusers"] == result["peer"].split()[-1]
    assert 0.95 <= params["project"] / params["diffusers"] <= 1.05  # "about the same size"
    for key in ("project_images_per_s", "diffusers_images_per_s"):
        assert positive(result["train"][key]) and positive(result["sample"][key]), key
    assert result["train"]["project_steps"] > 0 and result["train"]["diffusers_steps"] > 0
    assert all(math.isfinite(v) and v > -1e-6 for v in result["fid"].values())


# --------------------------------------------------------------------------- DDPM sampling speed
def reference_sample(model, n: int, seed: int, sampler: str, steps: int, labels=None) -> torch.Tensor:
    """The sampler written out plainly, with autograd on: the out-of-place code path of every block."""
    from components.models.base import to_uint8

    gen = torch.Generator().manual_seed(seed)
    sched, w = model.schedule, model.config.guidance_scale
    ts = list(reversed(range(model.config.timesteps))) if sampler == "ancestral" else sched.ddim_timesteps(steps)
    x = torch.randn((n, *model.spec.shape), generator=gen)
    with torch.enable_grad():
        for t, t_prev in zip(ts, [*ts[1:], -1], strict=True):
            eps = model.guided_eps(x, t, labels, w).detach()
            x = sched.step(eps, t, x, gen) if sampler == "ancestral" else sched.ddim_step(eps, t, t_prev, x, 0.0, gen)
    return to_uint8(x.detach())


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_fast_sampler_draws_the_same_images_bit_for_bit(conditional, sampler):
    """Sampling computes activations in place under inference mode; the images must not change.

    Bit for bit where this was written (Intel Xeon VM) and on earlier CI machines; on an AMD EPYC
    VM (2026-12-02) the unconditional ancestral case differed in 1 of 4,704 pixels by one grey
    level: the floats differ in their last bits there and one pixel crossed a rounding boundary.
    So: at most one level, in at most 0.1 % of the pixels.
    """
    from components.config import DDPMConfig

    cfg = DDPMConfig(base_channels=8, channel_mults=[1, 2], timesteps=12, sample_steps=5,
                     conditional=conditional, guidance_scale=1.5)
    model = build_model(cfg, DataSpec(channels=1, height=28, width=28, num_classes=10))
    with torch.no_grad():  # EMA weights away from their init, so every block matters
        for p in model.ema.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    labels = torch.arange(6) % 10 if conditional else None
    fast = model.sample(6, labels=labels, generator=torch.Generator().manual_seed(4), sampler=sampler, steps=5)
    plain = reference_sample(model, 6, 4, sampler, 5, labels)
    assert fast.dtype == torch.uint8 and fast.shape == (6, 1, 28, 28)
    differ = (fast.int() - plain.int()).abs()
    assert int(differ.max()) <= 1 and float((differ > 0).float().mean()) <= 1e-3, (int(differ.max()), int((differ > 0).sum()))
    assert fast.float().std() > 0  # not a constant image on both sides
