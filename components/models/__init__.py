"""Model families behind one interface, and the table that maps a config's family tag to its class.

``FAMILIES`` lists the generative families (the benchmarks, the report's colours and the tests read
it); ``FAMILY_CLASSES`` adds the classifier, the other model the training loop trains. The config
declares the same tags as its own ``family`` literals and imports nothing from here
(``tests/test_config.py`` checks the two agree). Stages call ``build_model(config, spec, device)``
and never branch on the family. Importing this package imports no torch; a family's module is
imported on first use. (MLflow's Model Registry, versions and the champion alias, is
``components/model_registry.py``, unrelated to this table.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from components.data.spec import DataSpec
    from components.models.base import TrainableModel

#: generative family tag -> (module, class name), in the order reports and benchmarks list them
FAMILIES: dict[str, tuple[str, str]] = {
    "gan": ("components.models.gan", "GAN"),
    "cgan": ("components.models.cgan", "CGAN"),
    "dcgan": ("components.models.dcgan", "DCGAN"),
    "vae": ("components.models.vae", "VAE"),
    "ddpm": ("components.models.ddpm", "DDPM"),
}
#: every trainable model, the evaluation feature extractor (trained by the same loop) included
FAMILY_CLASSES: dict[str, tuple[str, str]] = {**FAMILIES, "classifier": ("components.models.classifier", "Classifier")}


def model_class(family: str) -> type[TrainableModel]:
    """The class registered for ``family``."""
    try:
        module, name = FAMILY_CLASSES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILY_CLASSES)}") from None
    return getattr(importlib.import_module(module), name)


def family_kind(family: str) -> str:
    """The family's kind (``gan``, ``vae``, ``diffusion``), read from its class; the family itself if it has none."""
    return getattr(model_class(family), "kind", family)


def build_model(config, spec: DataSpec, device: torch.device | str = "cpu") -> TrainableModel:
    """Instantiate the model described by a validated family config."""
    return model_class(config.family)(config, spec, device)
