"""Every registered family (and its variants) behind the one model interface: attributes, shapes
(1 or 3 channels, 28/32/64 px, the classifier CNN too), step outputs, determinism, exact resume,
sampling randomness. Family-specific behaviour (how each
learns, the diffusion maths, label steering) lives in test_gan_family.py and test_vae_ddpm.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import CASES, TINY, assert_same_state, build, flat_state, run_steps, tiny_data

from components.config import ClassifierConfig, model_config_from_dict
from components.data.spec import DataSpec
from components.models import FAMILIES, family_kind, model_class

#: what each kind's train_step returns
STEP_KEYS = {"gan": {"loss_d", "loss_g", "d_real", "d_fake"}, "vae": {"loss", "recon", "kl"}, "diffusion": {"loss"}}
#: (channels, size) of the images every model must take
SHAPES = [(1, 28), (3, 32), (3, 64)]
#: each family's defaults (the shipped architectures, not the tiny ones), cheaper where a field
#: allows it (DDPM: few sampling steps)
CHEAP: dict[str, dict] = {"ddpm": {"timesteps": 20, "sample_steps": 2}}


def test_every_registered_family_has_a_tiny_case() -> None:
    assert set(TINY) == set(FAMILIES) and set(FAMILIES) <= set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_class_attributes_and_optimisers(case: str) -> None:
    family = CASES[case][0]
    cls = model_class(family)
    assert cls.family == family and family_kind(family) == cls.kind in STEP_KEYS
    model = build(case)
    assert tuple(model.networks()) == (*cls.network_names, *model.shadow_names)
    assert set(model.optimizers) and model.num_parameters() > 0


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("case", list(CASES))
def test_sample_shape_dtype_range_and_mode_restored(case: str, size: int) -> None:
    model = build(case, size)
    modes = {name: net.training for name, net in model.networks().items()}
    images = model.sample(3, labels=torch.tensor([0, 3, 9]), generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, size, size)
    assert images.dtype == torch.uint8 and images.device.type == "cpu"
    assert int(images.max()) > int(images.min())  # not a constant image
    assert {name: net.training for name, net in model.networks().items()} == modes  # eval inside, put back
    model.eval()
    model.sample(2)
    assert not any(net.training for net in model.networks().values())


@pytest.mark.parametrize(("channels", "size"), SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_default_family_trains_and_samples_at_every_shape(family: str, channels: int, size: int) -> None:
    spec = DataSpec(channels=channels, height=size, width=size, num_classes=3)
    model = model_class(family)(model_config_from_dict({"family": family, **CHEAP.get(family, {})}), spec)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, channels, size, size, generator=gen) * 2 - 1  # (B, C, H, W) in [-1, 1]
    losses = model.train_step(images, torch.tensor([0, 1, 2, 0]))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    out = model.sample(3, labels=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(1))
    assert out.shape == (3, channels, size, size) and out.dtype == torch.uint8


@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_classifier_cnn_at_every_shape(channels: int, size: int) -> None:
    spec = DataSpec(channels=channels, height=size, width=size, num_classes=3)
    classifier = model_class("classifier")(ClassifierConfig(width=4, feature_dim=8), spec)
    images = torch.rand(4, channels, size, size) * 2 - 1
    assert torch.isfinite(classifier.train_step(images, torch.tensor([0, 1, 2, 0]))["loss"])
    extract = classifier.feature_extractor()
    pixels = torch.randint(0, 256, (5, channels, size, size), dtype=torch.uint8)
    assert extract(pixels).shape == (5, 8) and extract.classify(pixels).shape == (5, 3)

@pytest.mark.parametrize("case", list(CASES))
def test_train_step_returns_detached_finite_scalars(case: str) -> None:
    model = build(case)
    images, labels = tiny_data(16)
    losses = model.train_step(images, labels)
    assert set(losses) == STEP_KEYS[model.kind]
    for name, value in losses.items():
        assert value.dim() == 0 and not value.requires_grad, name
        assert math.isfinite(float(value)), name
    assert model.step == 1


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_same_weights_and_training_and_global_rng_untouched(case: str) -> None:
    images, labels = tiny_data()
    rng_before = torch.get_rng_state()
    a, b, c = build(case, seed=3), build(case, seed=3), build(case, seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # init used a forked RNG
    assert_same_state(a, b)
    sa, sc = flat_state(a), flat_state(c)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert run_steps(a, 4, images, labels) == run_steps(b, 4, images, labels)
    assert_same_state(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_checkpoint_is_exact(case: str, tmp_path) -> None:
    """Two 'epochs' of 3 steps, reseeded at each epoch start, with and without a save/load in between."""
    images, labels = tiny_data()
    seed, steps = 5, 3
    straight = build(case, seed=seed)
    straight_losses = []
    for epoch in range(2):
        straight.reseed(seed, rank=0, epoch=epoch)
        straight_losses += run_steps(straight, steps, images, labels)

    first = build(case, seed=seed)
    first.reseed(seed, rank=0, epoch=0)
    losses = run_steps(first, steps, images, labels)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    del first
    resumed = build(case, seed=seed)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert resumed.step == steps
    resumed.reseed(seed, rank=0, epoch=1)
    losses += run_steps(resumed, steps, images, labels)

    assert losses == straight_losses  # bit-identical losses
    assert resumed.step == straight.step == 2 * steps
    assert_same_state(straight, resumed)  # weights, buffers, shadows and optimiser moments
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(straight.sample(4, torch.arange(4), gen), resumed.sample(4, torch.arange(4), gen.manual_seed(5)))


@pytest.mark.parametrize("case", list(CASES))
def test_sample_generator_argument(case: str) -> None:
    model = build(case)
    state = model.rng.get_state()
    a = model.sample(4, generator=torch.Generator().manual_seed(11))
    b = model.sample(4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(model.rng.get_state(), state)  # a given generator leaves self.rng alone
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(4, generator=torch.Generator().manual_seed(12)))
    model.sample(4)  # no generator: self.rng is used and advanced
    assert not torch.equal(model.rng.get_state(), state)
