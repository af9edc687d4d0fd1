"""What only the adversarial families do: D and G losses, how they learn, DCGAN's layout and
initialisation, CGAN's label steering. The interface tests they share with every family are in
test_models.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import build, run_steps
from torch import Tensor

from components.config import CGANConfig, DCGANConfig, GANConfig
from components.models import FAMILIES as REGISTERED
from components.models import family_kind, model_class
from components.models.dcgan import feature_map_plan
from components.models.gan import GAN, r1_penalty

FAMILIES = [f for f in REGISTERED if family_kind(f) == "gan"]  # every registered adversarial family
BATCH = 32


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


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    return blobs(128)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_adversarial_step_shared_by_every_gan_family(family: str) -> None:
    """Every GAN family is a GAN: it inherits the step and the sampler and changes only its networks."""
    cls = model_class(family)
    assert issubclass(cls, GAN) and cls.train_step is GAN.train_step and cls.sample is GAN.sample
    assert cls.conditional == (family == "cgan")
    assert cls.network_names == ("generator", "discriminator")
    assert set(build(family).optimizers) == {"generator", "discriminator"}


def test_r1_penalty_of_a_linear_discriminator() -> None:
    """For logit = <w, x> + b the gradient is w at every x: the penalty is ||w||^2 (MLP families on, DCGAN off)."""
    w = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)  # D's weights
    images = torch.randn(5, 1, 2, 3).requires_grad_(True)
    logits = (images * w).flatten(1).sum(1) + 0.5  # (5,)
    penalty = r1_penalty(logits, images)
    assert torch.allclose(penalty, w.detach().pow(2).sum())
    assert penalty.requires_grad  # D's step differentiates through it
    assert GANConfig().r1_gamma > 0 and CGANConfig().r1_gamma > 0 and DCGANConfig().r1_gamma == 0


def test_the_sampler_draws_from_the_moving_average_of_g(data: tuple[Tensor, Tensor]) -> None:
    """With ``ema_decay`` the GAN keeps and saves an average of G (warmed up: after step 1 it holds 10 % of
    the initial weights) and samples from it; without, from G itself (the DCGAN's default)."""
    images, labels = data
    model = build("cgan", ema_decay=0.99)
    assert tuple(model.networks()) == ("generator", "discriminator", "generator_ema")
    assert "generator_ema" in model.state_dict()["networks"]
    initial = {name: p.detach().clone() for name, p in model.generator.named_parameters()}
    model.train_step(images[:BATCH], labels[:BATCH])
    for (name, p), (ema_name, e) in zip(model.generator.named_parameters(), model.generator_ema.named_parameters(),
                                        strict=True):
        assert name == ema_name and not torch.equal(p, initial[name])
        assert torch.allclose(e, initial[name].lerp(p.detach(), 0.9))  # d = min(0.99, (1 + 0) / (10 + 0))
    for b, e in zip(model.generator.buffers(), model.generator_ema.buffers(), strict=True):
        assert torch.equal(b, e)  # BatchNorm's running statistics are G's
    run_steps(model, 10, images, labels, bs=BATCH)

    plain = build("cgan")  # the same networks without an average
    wanted = torch.arange(8) % 10
    plain.generator.load_state_dict(model.generator_ema.state_dict())
    drawn = model.sample(8, wanted, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, plain.sample(8, wanted, torch.Generator().manual_seed(0)))
    plain.generator.load_state_dict(model.generator.state_dict())
    assert not torch.equal(drawn, plain.sample(8, wanted, torch.Generator().manual_seed(0)))
    assert tuple(plain.networks()) == ("generator", "discriminator") and DCGANConfig().ema_decay is None
    with pytest.raises(ValueError, match="ema_decay"):
        GANConfig(ema_decay=1.0)


@pytest.mark.parametrize("d_steps", [1, 2])
def test_d_steps_discriminator_steps_per_generator_step(d_steps: int, data: tuple[Tensor, Tensor]) -> None:
    """``d_steps`` D updates, each on a fresh noise draw, then one G update: one model step."""
    images, labels = data
    model = build("gan", d_steps=d_steps)
    rng_before = model.rng.get_state()
    model.train_step(images[:BATCH], labels[:BATCH])
    adam_steps = {name: {int(state["step"]) for state in opt.state_dict()["state"].values()}
                  for name, opt in model.optimizers.items()}
    assert adam_steps == {"discriminator": {d_steps}, "generator": {1}} and model.step == 1
    replay = torch.Generator().set_state(rng_before)
    for _ in range(d_steps):
        torch.randn(BATCH, model.config.latent_dim, generator=replay)
    assert torch.equal(replay.get_state(), model.rng.get_state())  # one z per D step, nothing else drawn


def test_dcgan_32x32_and_plan() -> None:
    assert feature_map_plan(28) == (2, 7)
    assert feature_map_plan(32) == (3, 4)
    with pytest.raises(ValueError):
        feature_map_plan(30)
    model = build("dcgan", size=32)
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
def test_d_probabilities_and_positive_cross_entropies(family: str, data: tuple[Tensor, Tensor]) -> None:
    model = build(family)
    images, labels = data
    out = model.train_step(images[:BATCH], labels[:BATCH])
    assert 0 <= out["d_real"] <= 1 and 0 <= out["d_fake"] <= 1
    # Both are cross-entropies (the generator's is -log D(G(z)), non-saturating): positive.
    assert out["loss_d"] > 0 and out["loss_g"] > 0
    assert model.step == 1


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
    history = run_steps(model, 40, images, labels, bs=BATCH)
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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_dcgan_gradients_keep_their_parameters_strides(monkeypatch, precision):
    """params.yaml trains the DCGAN channels-last: DDP builds its bucket views from the parameters'
    strides, and a gradient laid out otherwise costs a copy a step (and its stride warning)."""
    from tiny_models import tiny_data

    from components.training.loop import configure_runtime
    from components.training.precision import CPU_BF16_ENV

    monkeypatch.setenv(CPU_BF16_ENV, "1")  # emulated where the CPU lacks it: the layouts are the same
    model = build("dcgan")
    configure_runtime(model, precision, channels_last=True)
    images, labels = tiny_data(16)
    model.train_step(images.contiguous(memory_format=torch.channels_last), labels)
    mismatched = [(net, name) for net, module in model.networks().items() for name, p in module.named_parameters()
                  if p.grad is not None and p.grad.stride() != p.stride()]
    assert mismatched == []
    conv_weights = [p for module in model.networks().values() for p in module.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert any(not p.is_contiguous() for p in conv_weights)  # the layout really changed
