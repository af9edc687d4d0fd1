"""A trained model as an image generator: requests of (number of images, label) in, uint8 images out.

Plain PyTorch and NumPy (no MLflow): the pyfunc wrapper (``components.serving.pyfunc``) and the
``generate`` command both call it, so a served model and a local checkpoint answer alike.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.models.base import GenerativeModel
from components.models.sampling import balanced_labels, draw, seeded

#: Most images one call may ask for (a served endpoint must not be asked to sample forever).
MAX_IMAGES = 4096


class GenerationError(ValueError):
    """A request the model cannot answer (bad label, count or parameter); the message says why."""


@dataclass(frozen=True)
class Generated:
    """What one call produced, one entry per image, in request order.

    Attributes:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64, the class each image was conditioned on; -1 = unconditioned.
        request: ``(N,)`` int64, the index of the request (input row) the image answers.
    """

    images: np.ndarray
    labels: np.ndarray
    request: np.ndarray


class Generator:
    """Seeded sampling from one trained model, with labels given by class index or name.

    Args:
        model: a generative model (weights loaded); put in eval mode here.
        class_names: the data set's class names, index = class (``meta.json``'s ``class_names``).
        batch_size: images per ``sample`` call. Part of the result (the one generator is consumed
            batch by batch), so it is fixed: the pyfunc and the command always use the default.
    """

    def __init__(self, model: GenerativeModel, class_names: Sequence[str] | None = None, batch_size: int = 256):
        self.model = model.eval()
        k = model.spec.num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(k)]
        if len(self.class_names) != k:
            raise ValueError(f"{len(self.class_names)} class names for a model of {k} classes")
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, class_names: Sequence[str] | None = None,
                        device: str | torch.device = "cpu") -> Generator:
        """Rebuild the model from its checkpoint alone (config and data spec travel inside it)."""
        from components.training.checkpoint import model_from_checkpoint

        return cls(model_from_checkpoint(path, device), class_names)

    # ---- requests -------------------------------------------------------------------
    def resolve_label(self, label: Any) -> int | None:
        """Class index for ``label`` (an index, its string, or a class name, case-insensitive); None = no label.

        Raises:
            GenerationError: an unknown class, or any label for an unconditional model.
        """
        if label is None or (isinstance(label, float) and math.isnan(label)) or (isinstance(label, str) and not label.strip()):
            return None
        if not self.model.is_conditional:
            raise GenerationError(f"this {self.model.family} model is unconditional: it takes no label (got {label!r})")
        if isinstance(label, (bool, np.bool_)):
            raise GenerationError(f"label {label!r} is neither a class index nor a class name")
        if isinstance(label, (int, np.integer)) or (isinstance(label, (float, np.floating)) and float(label).is_integer()):
            index = int(label)
        elif isinstance(label, str):
            text = label.strip()
            names = [n.lower() for n in self.class_names]
            if text.lower() in names:
                return names.index(text.lower())
            if not text.lstrip("-").isdigit():
                raise GenerationError(f"unknown label {label!r}; classes are {self._classes_text()}")
            index = int(text)
        else:
            raise GenerationError(f"label {label!r} is neither a class index nor a class name")
        if not 0 <= index < len(self.class_names):
            raise GenerationError(f"label {index} out of range; classes are {self._classes_text()}")
        return index

    def _classes_text(self) -> str:
        return ", ".join(f"{i}={n}" for i, n in enumerate(self.class_names))

    def check_counts(self, counts: Sequence[Any]) -> list[int]:
        """Validated image counts (whole numbers >= 1, at most ``MAX_IMAGES`` in all)."""
        out = []
        for n in counts:
            if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer, float, np.floating)) \
                    or not float(n).is_integer() or n < 1:
                raise GenerationError(f"num_images must be a whole number >= 1, got {n!r}")
            out.append(int(n))
        if sum(out) > MAX_IMAGES:
            raise GenerationError(f"{sum(out)} images asked for; at most {MAX_IMAGES} per call")
        return out

    def sampling_options(self, given: dict[str, Any], progress: bool) -> dict[str, Any]:
        """Keyword arguments for the model's ``sample``: the options it declares (``sampling_options()``),
        each checked when given; None or an option it does not take = its own default."""
        options: dict[str, Any] = {}
        for option in self.model.sampling_options():
            value = given.get(option.name)
            try:
                options[option.name] = None if value is None else option.check(value)
            except (TypeError, ValueError) as exc:
                raise GenerationError(str(exc)) from None
        if self.model.sample_progress:
            options["progress"] = progress
        return options

    # ---- sampling -------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: Sequence[tuple[Any, Any]], seed: int = 0, *, sampler: str | None = None,
                 steps: int | None = None, guidance_scale: float | None = None,
                 progress: bool = False) -> Generated:
        """Answer ``requests`` in order from one generator seeded with ``seed``.

        Args:
            requests: ``(num_images, label)`` pairs; label None = unconditioned (conditional DDPM:
                the null class; CGAN, which has none: the classes in turn, 0, 1, ..., K-1, 0, ...).
            seed: the same seed and requests give byte-identical images.
            sampler, steps, guidance_scale: for a family that declares them (``sampling_options()``:
                DDPM), else ignored; None = the model's config.
            progress: a progress bar over the denoising steps (diffusion) or the batches.

        Returns:
            ``Generated`` with one entry per image.

        Raises:
            GenerationError: a bad count, label or parameter (before any sampling).
        """
        counts = self.check_counts([n for n, _ in requests])
        labels = [self.resolve_label(label) for _, label in requests]
        options = self.sampling_options({"sampler": sampler, "steps": steps, "guidance_scale": guidance_scale},
                                        progress)
        model, device = self.model, self.model.device
        gen = seeded(seed, device)
        images, out_labels, rows = [], [], []
        chunks = [(row, start, min(self.batch_size, n - start)) for row, n in enumerate(counts)
                  for start in range(0, n, self.batch_size)]
        if progress and not model.sample_progress and len(chunks) > 1:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="sampling", unit="batch")
        for row, start, n in chunks:
            label = labels[row]
            if label is not None:
                cond = torch.full((n,), label, dtype=torch.int64, device=device)
            elif model.is_conditional and not model.samples_unlabelled:  # CGAN: the classes in turn
                cond = balanced_labels(n, model.spec.num_classes, start, device)
            else:
                cond = None
            batch = draw(model, n, gen, cond, **options)  # (n, C, H, W) uint8
            images.append(batch.cpu().numpy())
            out_labels.append(np.full(n, -1, np.int64) if cond is None else cond.cpu().numpy().astype(np.int64))
            rows.append(np.full(n, row, np.int64))
        c, h, w = self.model.spec.shape
        if not images:
            return Generated(np.zeros((0, c, h, w), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return Generated(np.concatenate(images), np.concatenate(out_labels), np.concatenate(rows))


# ---- the documented wire form: one base64 PNG per image --------------------------------
def encode_png(image: np.ndarray) -> str:
    """Base64 PNG of one ``(C, H, W)`` uint8 image (C = 1: greyscale, C = 3: RGB)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1|3, H, W) uint8 image, got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    buf = io.BytesIO()
    pil.save(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    """The ``(C, H, W)`` uint8 image of one base64 PNG (inverse of ``encode_png``)."""
    from PIL import Image

    array = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_images(encoded: Sequence[str]) -> np.ndarray:
    """``(N, C, H, W)`` uint8 from a sequence of base64 PNGs (the pyfunc's ``image`` column)."""
    return np.stack([decode_png(t) for t in encoded]) if len(encoded) else np.zeros((0, 1, 0, 0), np.uint8)
