"""The one way images are drawn from a trained model: balanced labels, a seeded generator, and
the options a family's ``sample`` accepts beyond ``(n, labels, generator)``.

Every caller goes through here: the sample grids (``components.report.grid``), the sample
stage's job (``components.distributed.inference_jobs.sample_job``), serving
(``components.serving.generator``) and CGAN's default labels. Plain PyTorch: no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from components.models.base import GenerativeModel


def balanced_labels(n: int, num_classes: int, start: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """Image ``i`` gets class ``(start + i) % K``: every class equally often (to within one), and a
    batch that starts at ``start`` continues the classes of the batches before it.

    Returns:
        ``(n,)`` int64 on ``device``.
    """
    return torch.arange(start, start + n, device=device) % num_classes


def seeded(seed: int, device: torch.device | str) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def draw(model: GenerativeModel, n: int, generator: torch.Generator, labels: Tensor | None = None,
         **options: Any) -> Tensor:
    """``n`` images from ``model``; ``labels`` reach it only if it is conditional.

    Args:
        model: a generative model (eval mode is the caller's business).
        n: number of images.
        generator: the randomness, consumed in the order ``model.sample`` consumes it.
        labels: ``(n,)`` int64 classes (``balanced_labels``), or None.
        options: the family's sampling options (``model.sampling_options()``).

    Returns:
        ``(n, C, H, W)`` uint8 on the model's device.
    """
    return model.sample(n, labels=labels if model.is_conditional else None, generator=generator, **options)


def draw_balanced(model: GenerativeModel, n: int, seed: int, start: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` images of the balanced classes ``start, start + 1, ... (mod K)`` from a generator seeded with ``seed``.

    Returns:
        ``(images (n, C, H, W) uint8, labels (n,) int64)`` on the model's device; the labels are
        the balanced ones even for an unconditional model (which ignores them).
    """
    labels = balanced_labels(n, model.spec.num_classes, start, model.device)
    return draw(model, n, seeded(seed, model.device), labels), labels


@dataclass(frozen=True)
class SamplingOption:
    """One keyword option of a family's ``sample`` that callers may set (serving, ``generate``).

    Attributes:
        name: the keyword of ``sample`` (and the served parameter's name).
        type: the served parameter's type (MLflow ``ParamSpec``): ``"string"``, ``"long"`` or ``"double"``.
        default: the model's own value (from its config).
        choices: the allowed values of a string option; None = any.
        low, high: inclusive bounds of a number; None = unbounded.
        bounds_text: how the bounds read in an error ("between 1 and the model's 50 timesteps").
    """

    name: str
    type: Literal["string", "long", "double"]
    default: Any
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    bounds_text: str = ""

    def check(self, value: Any) -> Any:
        """``value`` as this option's type.

        Raises:
            ValueError: a value outside the choices or bounds; the message names the option.
        """
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}")
            return value
        number = int(value) if self.type == "long" else float(value)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ValueError(f"{self.name} must be {self.bounds_text}, got {value}")
        return number
