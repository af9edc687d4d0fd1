"""Tiny trained generators of every family, their checkpoints and their logged pyfuncs (for the
serving, registry and generate tests). Each model takes a few optimisation steps in-process:
enough to have non-initial weights, seconds in all."""

from __future__ import annotations

from pathlib import Path

import torch

from components.config import model_config_from_dict
from components.models import build_model
from components.models.base import DataSpec
from components.training.checkpoint import checkpoint_payload, save_checkpoint

TINY: dict[str, dict] = {
    "gan": {"family": "gan", "latent_dim": 16, "hidden_dim": 32},
    "cgan": {"family": "cgan", "latent_dim": 16, "hidden_dim": 32, "label_embed_dim": 4},
    "dcgan": {"family": "dcgan", "latent_dim": 16, "g_channels": 8, "d_channels": 8},
    "vae": {"family": "vae", "architecture": "conv", "hidden_dim": 8, "latent_dim": 4},
    "ddpm": {"family": "ddpm", "base_channels": 8, "channel_mults": [1, 2, 2], "timesteps": 50, "sample_steps": 4},
    "ddpm_cond": {"family": "ddpm", "base_channels": 8, "channel_mults": [1, 2, 2], "timesteps": 50,
                  "sample_steps": 4, "conditional": True},
}
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPEC = DataSpec(1, 28, 28, 10)


def tiny_checkpoint(name: str, folder: Path, steps: int = 3, seed: int = 0) -> Path:
    """Train ``TINY[name]`` for ``steps`` steps on random images; write ``folder/checkpoint.pt``."""
    model = build_model(model_config_from_dict({**TINY[name], "seed": seed}), SPEC)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        images = torch.rand((16, *SPEC.shape), generator=gen) * 2 - 1
        model.train_step(images, torch.arange(16) % SPEC.num_classes)
    return save_checkpoint(Path(folder) / "checkpoint.pt", checkpoint_payload(model, name=name, epoch=1))


def log_tiny(uri: str, name: str, folder: Path, experiment: str = "serving-test", seed: int = 0) -> tuple[str, str]:
    """A run holding a tiny ``name`` generator: returns ``(run_id, model_uri)``."""
    from components.serving.pyfunc import log_generator
    from components.tracking import client

    checkpoint = tiny_checkpoint(name, folder, seed=seed)
    c = client(uri)
    found = c.get_experiment_by_name(experiment)
    # artifacts beside the store, never in the caller's working directory (the default ./mlruns)
    local = (Path(folder).parent / "artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    exp_id = found.experiment_id if found else c.create_experiment(experiment, artifact_location=local)
    run_id = c.create_run(exp_id, run_name=name).info.run_id
    return run_id, log_generator(uri, run_id, checkpoint, CLASS_NAMES)
