"""Model families behind one interface, and the registry that maps a config's family tag to its class.

Stages call ``build_model(config, spec, device)`` and never branch on the family.
"""

from __future__ import annotations

import importlib

import torch

from components.models.base import DataSpec, TrainableModel

#: family tag -> (module, class name); modules are imported on first use.
REGISTRY: dict[str, tuple[str, str]] = {
    "gan": ("components.models.gan", "GAN"),
    "cgan": ("components.models.cgan", "CGAN"),
    "dcgan": ("components.models.dcgan", "DCGAN"),
    "vae": ("components.models.vae", "VAE"),
    "ddpm": ("components.models.ddpm", "DDPM"),
    # not generative: the evaluation feature extractor, trained by the same loop
    "classifier": ("components.models.classifier", "Classifier"),
}
GENERATIVE_FAMILIES = ("gan", "cgan", "dcgan", "vae", "ddpm")


def model_class(family: str) -> type[TrainableModel]:
    """The class registered for ``family``."""
    try:
        module, name = REGISTRY[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), name)


def build_model(config, spec: DataSpec, device: torch.device | str = "cpu") -> TrainableModel:
    """Instantiate the model described by a validated family config."""
    return model_class(config.family)(config, spec, device)
