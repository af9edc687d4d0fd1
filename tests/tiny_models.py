"""Tiny models of every registered family, and the data and helpers the model tests share.

``CASES`` holds one case per family of ``components.models.FAMILIES`` plus the
variants whose code paths differ (the VAE's MLP, the conditional DDPM, a GAN that samples from
its moving average of G).
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.config import model_config_from_dict
from components.data.spec import DataSpec
from components.models import FAMILIES, model_class
from components.models.base import GenerativeModel

#: per family: small enough that a test runs in about a second on one core, complete enough to
#: run every code path (DDPM: attention and three levels, 28 -> 14 -> 7)
TINY: dict[str, dict] = {
    "gan": {"latent_dim": 16, "hidden_dim": 32},
    "cgan": {"latent_dim": 16, "hidden_dim": 32, "label_embed_dim": 4},
    "dcgan": {"latent_dim": 16, "g_channels": 8, "d_channels": 8},
    "vae": {"hidden_dim": 8, "latent_dim": 4, "lr": 3e-3, "architecture": "conv"},
    "ddpm": {"base_channels": 8, "channel_mults": [1, 2, 2], "timesteps": 50, "sample_steps": 5, "lr": 2e-3},
}
#: case name -> (family, overrides of its tiny settings)
CASES: dict[str, tuple[str, dict]] = {
    **{family: (family, {}) for family in FAMILIES},
    "vae-mlp": ("vae", {"architecture": "mlp"}),
    "ddpm-cond": ("ddpm", {"conditional": True}),
    "cgan-ema": ("cgan", {"ema_decay": 0.9}),
}


def tiny_config(case: str, **overrides) -> dict:
    """The model section of ``case`` (a family or a variant): its family's tiny settings, the
    variant's, then ``overrides``; ``family`` included."""
    family, variant = CASES[case]
    return {"family": family, **TINY[family], **variant, **overrides}


def build(case: str, size: int = 28, **overrides) -> GenerativeModel:
    """A tiny model of ``case`` (a family or a variant) on CPU, for ``size`` x ``size`` grey images."""
    config = model_config_from_dict(tiny_config(case, **overrides))
    return model_class(config.family)(config, DataSpec(1, size, size, 10))


def tiny_data(n: int = 32, size: int = 28, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Class-dependent bright squares on a dark, slightly noisy background: ``(n, 1, S, S)`` in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.full((n, 1, size, size), -1.0) + 0.1 * torch.rand((n, 1, size, size), generator=gen)
    for i, k in enumerate(labels.tolist()):
        r, c = 2 + 2 * (k // 2), 2 + 4 * (k % 5)
        images[i, :, r : r + 8, c : c + 8] = 1.0
    return images.clamp(-1, 1), labels


def run_steps(model: GenerativeModel, steps: int, images: Tensor, labels: Tensor, bs: int = 16) -> list[dict]:
    """Train ``steps`` more steps cycling over fixed mini-batches (from ``model.step`` on); float losses."""
    out = []
    for s in range(model.step, model.step + steps):
        i = (s * bs) % len(images)
        losses = model.train_step(images[i : i + bs], labels[i : i + bs])
        out.append({k: float(v) for k, v in losses.items()})
    return out


def flat_state(model: GenerativeModel) -> dict[str, Tensor]:
    """Every network tensor (batch-norm buffers and shadows included) and optimiser state tensor, by a flat name."""
    flat = {}
    for net, sd in model.state_dict()["networks"].items():
        flat.update({f"net.{net}.{k}": v for k, v in sd.items()})
    for opt, sd in model.state_dict()["optimizers"].items():
        for pid, st in sd["state"].items():
            flat.update({f"opt.{opt}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return flat


def assert_same_state(a: GenerativeModel, b: GenerativeModel) -> None:
    sa, sb = flat_state(a), flat_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"
