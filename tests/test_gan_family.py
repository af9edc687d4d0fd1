"""GAN, CGAN and DCGAN behind the common model interface: shapes, learning, determinism, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from components.config import model_config_from_dict
from components.models import FAMILIES as REGISTERED
from components.models import family_kind, model_class
from components.models.base import DataSpec, GenerativeModel
from components.models.dcgan import feature_map_plan

# Tiny networks: every test runs in about a second on one CPU core.
TINY: dict[str, dict] = {
    "gan": {"latent_dim": 16, "hidden_dim": 32},
    "cgan": {"latent_dim": 16, "hidden_dim": 32, "label_embed_dim": 4},
    "dcgan": {"latent_dim": 16, "g_channels": 8, "d_channels": 8},
}
FAMILIES = [f for f in REGISTERED if family_kind(f) == "gan"]  # every registered adversarial family
BATCH = 32


def test_every_adversarial_family_has_tiny_settings() -> None:
    assert set(TINY) == set(FAMILIES)


def build(family: str, spec: DataSpec | None = None, **overrides) -> GenerativeModel:
    """A tiny model of ``family`` on CPU."""
    config = model_config_from_dict({"family": family, **TINY[family], **overrides})
    return model_class(family)(config, spec or DataSpec())


def blobs(n: int, size: int = 28, num_classes: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Class-dependent Gaussian blobs: class k sits at angle 2*pi*k/K around the centre.

    Returns:
        images ``(n, 1, size, size)`` float in [-1, 1] (mostly -1 background), labels ``(n,)`` int64.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    angle = 2 * math.pi * labels.float() / num_classes
    cx = size / 2 + size / 4 * torch.cos(angle) + torch.randn(n, generator=gen)  # (n,)
    cy = size / 2 + size / 4 * torch.sin(angle) + torch.randn(n, generator=gen)
    axis = torch.arange(size).float()
    d2 = (axis[None, None, :] - cx[:, None, None]) ** 2 + (axis[None, :, None] - cy[:, None, None]) ** 2
    images = torch.exp(-d2 / (2 * 3.0**2))  # (n, size, size) in [0, 1]
    return (images * 2 - 1)[:, None], labels


def train(model: GenerativeModel, images: Tensor, labels: Tensor, steps: int) -> list[dict[str, float]]:
    """``steps`` train steps cycling over fixed batches; the per-step outputs as floats."""
    history = []
    for step in range(steps):
        i = (step * BATCH) % len(images)
        out = model.train_step(images[i : i + BATCH], labels[i : i + BATCH])
        history.append({k: float(v) for k, v in out.items()})
    return history


def all_state_tensors(model: GenerativeModel) -> dict[str, Tensor]:
    """Every network tensor (weights and batch-norm buffers) by dotted name."""
    return {f"{net}.{k}": v for net, module in model.networks().items() for k, v in module.state_dict().items()}


def assert_same_state(a: GenerativeModel, b: GenerativeModel) -> None:
    sa, sb = all_state_tensors(a), all_state_tensors(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box two threads can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    return blobs(128)


# --------------------------------------------------------------------------- interface
@pytest.mark.parametrize("family", FAMILIES)
def test_class_attributes(family: str) -> None:
    cls = model_class(family)
    assert cls.family == family
    assert cls.kind == "gan"
    assert cls.conditional == (family == "cgan")
    assert cls.network_names == ("generator", "discriminator")
    model = build(family)
    assert set(model.optimizers) == {"generator", "discriminator"}
    assert model.num_parameters() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_shape_dtype_and_train_mode_restored(family: str) -> None:
    model = build(family)
    images = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8
    assert images.shape == (6, 1, 28, 28)
    assert model.generator.training  # sampling ran in eval mode and put train mode back
    model.eval()
    model.sample(2)
    assert not model.generator.training


def test_dcgan_32x32_and_plan() -> None:
    assert feature_map_plan(28) == (2, 7)
    assert feature_map_plan(32) == (3, 4)
    with pytest.raises(ValueError):
        feature_map_plan(30)
    spec = DataSpec(height=32, width=32)
    model = build("dcgan", spec)
    assert model.sample(3).shape == (3, 1, 32, 32)
    images, labels = blobs(BATCH, size=32)
    out = model.train_step(images, labels)
    assert all(torch.isfinite(v) for v in out.values())


def test_dcgan_init_is_normal_002() -> None:
    """Radford et al.'s init in both networks (PyTorch's default conv init has std ~0.026 here)."""
    model = build("dcgan", g_channels=32, d_channels=32)
    d_conv, d_norm = model.discriminator.net[2], model.discriminator.net[3]  # (d -> 2d) conv: 32*64*16 weights
    g_conv, g_norm = model.generator.net[3], model.generator.net[4]  # (2g -> g) transposed conv
    assert isinstance(d_conv, torch.nn.Conv2d) and isinstance(g_conv, torch.nn.ConvTranspose2d)
    for conv in (d_conv, g_conv):
        assert abs(conv.weight.std().item() - 0.02) < 0.002
        assert abs(conv.weight.mean().item()) < 0.002
    for norm in (d_norm, g_norm):
        assert isinstance(norm, torch.nn.BatchNorm2d)
        assert 0.01 < norm.weight.std().item() < 0.03 and abs(norm.weight.mean().item() - 1) < 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_train_step_outputs(family: str, data: tuple[Tensor, Tensor]) -> None:
    model = build(family)
    images, labels = data
    out = model.train_step(images[:BATCH], labels[:BATCH])
    assert set(out) == {"loss_d", "loss_g", "d_real", "d_fake"}
    for name, value in out.items():
        assert value.dim() == 0 and not value.requires_grad, name
        assert torch.isfinite(value), name
    assert 0 <= out["d_real"] <= 1 and 0 <= out["d_fake"] <= 1
    # Both are cross-entropies (the generator's is -log D(G(z)), non-saturating): positive.
    assert out["loss_d"] > 0 and out["loss_g"] > 0
    assert model.step == 1


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("family", FAMILIES)
def test_losses_finite_and_learning(family: str, data: tuple[Tensor, Tensor]) -> None:
    """Early GAN training, measured on first/last 5-step windows of 40 steps.

    The discriminator learns to separate real from fake (its loss falls, the gap between
    D(real) and D(fake) widens) and the generator moves its output towards the data
    (mean pixel of samples from fixed noise gets closer to the data's mean pixel).
    """
    images, labels = data
    model = build(family, lr=5e-4)
    fixed = torch.Generator().manual_seed(0)
    real_mean = ((images + 1) * 127.5).mean().item()
    before = abs(model.sample(128, generator=fixed.manual_seed(0)).float().mean().item() - real_mean)
    history = train(model, images, labels, steps=40)
    after = abs(model.sample(128, generator=fixed.manual_seed(0)).float().mean().item() - real_mean)

    assert all(math.isfinite(v) for h in history for v in h.values())

    def window_mean(key: str, rows: list[dict[str, float]]) -> float:
        return sum(r[key] for r in rows) / len(rows)

    first, last = history[:5], history[-5:]
    assert window_mean("loss_d", last) < window_mean("loss_d", first)
    gap_first = window_mean("d_real", first) - window_mean("d_fake", first)
    gap_last = window_mean("d_real", last) - window_mean("d_fake", last)
    assert gap_last > gap_first
    assert after < before - 3  # pixel levels, out of 255


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_and_global_rng_untouched(family: str, data: tuple[Tensor, Tensor]) -> None:
    images, labels = data
    global_state = torch.random.get_rng_state()
    a, b = build(family, seed=3), build(family, seed=3)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert_same_state(a, b)
    train(a, images, labels, steps=4)
    train(b, images, labels, steps=4)
    assert_same_state(a, b)

    c = build(family, seed=4)
    first = next(iter(all_state_tensors(c)))
    assert not torch.equal(all_state_tensors(build(family, seed=3))[first], all_state_tensors(c)[first])


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_matches_uninterrupted_run(family: str, data: tuple[Tensor, Tensor], tmp_path) -> None:
    """Two 'epochs' of 3 steps, reseeded at each epoch start, with and without a save/load in between."""
    images, labels = data
    seed, steps = 5, 3

    straight = build(family, seed=seed)
    for epoch in range(2):
        straight.reseed(seed, rank=0, epoch=epoch)
        train(straight, images, labels, steps)

    first = build(family, seed=seed)
    first.reseed(seed, rank=0, epoch=0)
    train(first, images, labels, steps)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    del first

    resumed = build(family, seed=seed)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert resumed.step == steps
    resumed.reseed(seed, rank=0, epoch=1)
    train(resumed, images, labels, steps)

    assert resumed.step == straight.step == 2 * steps
    assert_same_state(straight, resumed)
    for name in ("generator", "discriminator"):
        sa = straight.optimizers[name].state_dict()["state"]
        sb = resumed.optimizers[name].state_dict()["state"]
        for idx in sa:
            assert torch.equal(sa[idx]["exp_avg"], sb[idx]["exp_avg"])


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("family", FAMILIES)
def test_sample_generator_argument(family: str) -> None:
    model = build(family)
    state = model.rng.get_state()
    a = model.sample(4, generator=torch.Generator().manual_seed(11))
    b = model.sample(4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(model.rng.get_state(), state)  # a given generator leaves self.rng alone
    assert torch.equal(a, b)
    c = model.sample(4, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(a, c)
    model.sample(4)  # no generator: self.rng is used and advanced
    assert not torch.equal(model.rng.get_state(), state)


def test_cgan_labels_steer_samples() -> None:
    model = build("cgan")
    n = 8
    zeros = model.sample(n, torch.zeros(n, dtype=torch.int64), torch.Generator().manual_seed(0))
    ones = model.sample(n, torch.ones(n, dtype=torch.int64), torch.Generator().manual_seed(0))
    zeros_again = model.sample(n, torch.zeros(n, dtype=torch.int64), torch.Generator().manual_seed(0))
    assert torch.equal(zeros, zeros_again)
    assert not torch.equal(zeros, ones)
    # every row differs, not just some pixels of one image
    assert ((zeros.float() - ones.float()).abs().flatten(1).amax(dim=1) > 0).all()

    assert model.default_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.equal(
        model.sample(12, generator=torch.Generator().manual_seed(0)),
        model.sample(12, model.default_labels(12), torch.Generator().manual_seed(0)),
    )
    with pytest.raises(ValueError):
        model.sample(3, torch.zeros(4, dtype=torch.int64))
