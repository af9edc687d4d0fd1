"""Every registered family and the classifier CNN build, train a step and sample at 1 or 3 channels, 28/32/64 px."""

from __future__ import annotations

import pytest
import torch

from components.config import ClassifierConfig, model_config_from_dict
from components.models import FAMILIES, REGISTRY, model_class
from components.models.base import DataSpec

SHAPES = [(1, 28), (3, 32), (3, 64)]
#: each family's defaults, made cheaper where a field exists for it (DDPM: few sampling steps)
CHEAP: dict[str, dict] = {"ddpm": {"timesteps": 20, "sample_steps": 2}}


@pytest.mark.parametrize(("channels", "size"), SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_and_samples_at_every_shape(family: str, channels: int, size: int) -> None:
    assert family in REGISTRY
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


def test_rgb_sample_grid_stays_rgb(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from components.report.grid import make_grid

    images = np.zeros((4, 3, 8, 8), np.uint8)
    images[:, 0] = 255  # pure red
    grid = make_grid(images, rows=2)
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2, 3) and grid[2:10, 2:10].tolist() == [[[255, 0, 0]] * 8] * 8
    Image.fromarray(grid).save(tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").mode == "RGB"
    assert make_grid(images[:, :1], rows=2).ndim == 2  # grayscale stays one plane
