"""Conditional MLP GAN (Mirza & Osindero 2014, https://arxiv.org/abs/1411.1784).

The MLP GAN of ``gan.py`` with the class label fed to both networks: each network owns a
label embedding that is concatenated to its input (to ``z`` in the generator, to the
flattened image in the discriminator). Training step and sampler are ``GAN``'s, with the
labels passed to the networks (``condition``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from components.config import CGANConfig
from components.models.gan import GAN, discriminator_layers, generator_layers
from components.models.sampling import balanced_labels


class ConditionalGenerator(nn.Module):
    """``[z, embed(y)]`` -> hidden -> 2*hidden -> image (``generator_layers``).

    Args:
        latent_dim: size of ``z``.
        hidden_dim: width of the first hidden layer.
        num_classes: number of labels.
        embed_dim: size of the label embedding.
        shape: output image shape ``(C, H, W)``.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, num_classes: int, embed_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        c, h, w = shape
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = nn.Sequential(*generator_layers(latent_dim + embed_dim, hidden_dim, c * h * w))

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """``(B, latent_dim)``, ``(B,)`` int64 -> ``(B, C, H, W)``."""
        x = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (B, latent_dim + embed_dim)
        return self.net(x).view(-1, *self.shape)


class ConditionalDiscriminator(nn.Module):
    """``[image, embed(y)]`` -> 2*hidden -> hidden -> one logit (``discriminator_layers``).

    Args:
        hidden_dim: width of the last hidden layer.
        num_classes: number of labels.
        embed_dim: size of the label embedding.
        shape: input image shape ``(C, H, W)``.
    """

    def __init__(self, hidden_dim: int, num_classes: int, embed_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = nn.Sequential(*discriminator_layers(c * h * w + embed_dim, hidden_dim))

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        """``(B, C, H, W)``, ``(B,)`` int64 -> ``(B,)`` logits."""
        x = torch.cat([images.flatten(1), self.embed(labels).to(images.dtype)], dim=1)  # (B, C*H*W + embed_dim)
        return self.net(x).squeeze(1)


class CGAN(GAN):
    """Label-conditioned MLP GAN.

    Fakes in a training step carry the real batch's labels, so the generator sees the data's
    class frequencies.

    Args:
        config: the ``cgan`` training section.
        spec: data shape and number of classes.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str] = "cgan"
    conditional: ClassVar[bool] = True
    samples_unlabelled: ClassVar[bool] = False  # no null class: unlabelled requests get balanced labels
    config: CGANConfig

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """Label-conditioned ``(generator, discriminator)``, each with its own label embedding."""
        config, spec = self.config, self.spec
        return (ConditionalGenerator(config.latent_dim, config.hidden_dim, spec.num_classes, config.label_embed_dim,
                                     spec.shape),
                ConditionalDiscriminator(config.hidden_dim, spec.num_classes, config.label_embed_dim, spec.shape))

    def condition(self, labels: Tensor) -> tuple[Tensor, ...]:
        """Both networks see the labels: ``(labels,)``, ``(B,)`` int64."""
        return (labels,)

    def default_labels(self, n: int) -> Tensor:
        """``0, 1, ..., K-1, 0, 1, ...``: every class equally often (to within one). ``(n,)`` int64."""
        return balanced_labels(n, self.spec.num_classes, device=self.device)

    def sample_condition(self, n: int, labels: Tensor | None) -> tuple[Tensor, ...]:
        """``(labels,)`` as ``(n,)`` int64 on the device; ``None`` spreads the classes evenly (``default_labels``)."""
        if labels is None:
            labels = self.default_labels(n)
        labels = labels.to(self.device, torch.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        return (labels,)
