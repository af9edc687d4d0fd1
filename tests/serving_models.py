"""Tiny trained generators of every family, their checkpoints and their logged pyfuncs (for the
serving, registry and generate tests). Each model takes a few optimisation steps in-process:
enough to have non-initial weights, seconds in all."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import tiny_config

from components.config import model_config_from_dict
from components.data.spec import DataSpec
from components.models import FAMILIES, build_model
from components.training.checkpoint import checkpoint_payload, save_checkpoint

#: what the serving tests log: one case of tiny_models.CASES per family, and the conditional DDPM
#: (its label and guidance paths)
SERVED = [*FAMILIES, "ddpm-cond"]
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPEC = DataSpec(1, 28, 28, 10)


def tiny_checkpoint(name: str, folder: Path, steps: int = 3, seed: int = 0) -> Path:
    """Train the tiny model of case ``name`` (tiny_models.CASES) for ``steps`` steps on random
    images; write ``folder/checkpoint.pt``."""
    model = build_model(model_config_from_dict(tiny_config(name, seed=seed)), SPEC)
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
