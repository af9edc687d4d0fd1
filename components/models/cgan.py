"""Conditional MLP GAN (Mirza & Osindero 2014, https://arxiv.org/abs/1411.1784).

The MLP GAN of ``gan.py`` with the class label fed to both networks: each network owns a
label embedding that is concatenated to its input (to ``z`` in the generator, to the
flattened image in the discriminator). Same losses: binary cross-entropy on logits and the
non-saturating generator loss.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import CGANConfig
from components.models.base import DataSpec, GenerativeModel, to_uint8


class ConditionalGenerator(nn.Module):
    """``[z, embed(y)]`` -> hidden -> 2*hidden -> image, tanh output in [-1, 1].

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
        self.net = nn.Sequential(
            nn.Linear(latent_dim + embed_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, hidden_dim * 2),
            nn.BatchNorm1d(hidden_dim * 2),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim * 2, c * h * w),
            nn.Tanh(),
        )

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """``(B, latent_dim)``, ``(B,)`` int64 -> ``(B, C, H, W)``."""
        x = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (B, latent_dim + embed_dim)
        return self.net(x).view(-1, *self.shape)


class ConditionalDiscriminator(nn.Module):
    """``[image, embed(y)]`` -> 2*hidden -> hidden -> one logit (no sigmoid).

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
        self.net = nn.Sequential(
            nn.Linear(c * h * w + embed_dim, hidden_dim * 2),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim * 2, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        """``(B, C, H, W)``, ``(B,)`` int64 -> ``(B,)`` logits."""
        x = torch.cat([images.flatten(1), self.embed(labels).to(images.dtype)], dim=1)  # (B, C*H*W + embed_dim)
        return self.net(x).squeeze(1)


class CGAN(GenerativeModel):
    """Label-conditioned MLP GAN.

    The networks are the attributes ``generator`` and ``discriminator``; initial weights
    depend only on ``config.seed``. Fakes in a training step carry the real batch's labels,
    so the generator sees the data's class frequencies.

    Args:
        config: the ``cgan`` training section.
        spec: data shape and number of classes.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str] = "cgan"
    kind: ClassVar[Literal["gan", "vae", "diffusion"]] = "gan"
    conditional: ClassVar[bool] = True
    network_names: ClassVar[tuple[str, ...]] = ("generator", "discriminator")

    def __init__(self, config: CGANConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        # Build on CPU under a private seed, then move: same seed -> same weights on any
        # device, and the caller's global RNG stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            generator = ConditionalGenerator(
                config.latent_dim, config.hidden_dim, spec.num_classes, config.label_embed_dim, spec.shape
            )
            discriminator = ConditionalDiscriminator(
                config.hidden_dim, spec.num_classes, config.label_embed_dim, spec.shape
            )
        self.generator: nn.Module = generator.to(self.device)
        self.discriminator: nn.Module = discriminator.to(self.device)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.make_adam(self.generator), "discriminator": self.make_adam(self.discriminator)}

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One discriminator step, then one generator step, on the same fake batch.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            labels: ``(B,)`` int64 classes of ``images``; the fakes are asked for the same classes.

        Returns:
            ``loss_d``, ``loss_g`` and the mean discriminator probabilities ``d_real`` and
            ``d_fake`` (before the discriminator update), detached 0-dim tensors.
        """
        batch = images.shape[0]
        z = torch.randn(batch, self.config.latent_dim, generator=self.rng, device=self.device)
        ones = torch.ones(batch, device=self.device)
        zeros = torch.zeros(batch, device=self.device)
        with self.autocast():
            fake = self.generator(z, labels)  # (B, C, H, W)

        # Discriminator: (real, y) -> 1, (fake, y) -> 0. fake.detach(): no gradient into G here.
        opt_d = self.optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            logit_real = self.discriminator(images, labels).float()  # (B,)
            logit_fake = self.discriminator(fake.detach(), labels).float()
        loss_real = F.binary_cross_entropy_with_logits(logit_real, ones)
        loss_fake = F.binary_cross_entropy_with_logits(logit_fake, zeros)
        loss_d = loss_real + loss_fake
        loss_d.backward()
        self.clip(self.discriminator)
        opt_d.step()

        # Generator: non-saturating loss, fake labelled real, through the updated D.
        # D also receives gradients here; they are discarded by the next zero_grad.
        opt_g = self.optimizers["generator"]
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            logit_gen = self.discriminator(fake, labels).float()
        loss_g = F.binary_cross_entropy_with_logits(logit_gen, ones)
        loss_g.backward()
        self.clip(self.generator)
        opt_g.step()

        self.step += 1
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(logit_real.detach()).mean(),
            "d_fake": torch.sigmoid(logit_fake.detach()).mean(),
        }

    def default_labels(self, n: int) -> Tensor:
        """``0, 1, ..., K-1, 0, 1, ...``: every class equally often (to within one). ``(n,)`` int64."""
        return torch.arange(n, device=self.device) % self.spec.num_classes

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images of the requested classes, generator in eval mode.

        Args:
            n: number of images.
            labels: ``(n,)`` int64 classes; ``None`` spreads the classes evenly (``default_labels``).
            generator: noise source; ``self.rng`` (and so training) is untouched when given.

        Returns:
            ``(n, C, H, W)`` uint8 on ``self.device``.
        """
        if labels is None:
            labels = self.default_labels(n)
        labels = labels.to(self.device, torch.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        # The bare network: a DDP wrapper would start collectives (buffer broadcast) that a
        # rank-0-only sampler would never see answered.
        net_g = self.net("generator")
        was_training = net_g.training
        net_g.eval()
        try:
            rng = generator if generator is not None else self.rng
            z = torch.randn(n, self.config.latent_dim, generator=rng, device=self.device)  # (n, latent_dim)
            with self.autocast():
                images = net_g(z, labels)  # (n, C, H, W)
        finally:
            net_g.train(was_training)
        return to_uint8(images)
