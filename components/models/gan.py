"""MLP GAN (Goodfellow et al. 2014, https://arxiv.org/abs/1406.2661).

Two fully connected networks: the generator maps noise ``z`` to an image, the
discriminator maps an image to one logit. Trained with binary cross-entropy on logits
and the non-saturating generator loss (the generator maximises ``log D(G(z))`` instead of
minimising ``log(1 - D(G(z)))``, which gives strong gradients early in training).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import GANConfig
from components.models.base import DataSpec, GenerativeModel, to_uint8


class MLPGenerator(nn.Module):
    """``z`` -> hidden -> 2*hidden -> image, tanh output in [-1, 1].

    Batch norm on the second hidden layer only: the first layer sees raw Gaussian noise,
    which is already normalised (as in the classic PyTorch MLP GAN).

    Args:
        latent_dim: size of ``z``.
        hidden_dim: width of the first hidden layer.
        shape: output image shape ``(C, H, W)``.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, hidden_dim * 2),
            nn.BatchNorm1d(hidden_dim * 2),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim * 2, c * h * w),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` -> ``(B, C, H, W)``."""
        return self.net(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    """Image -> 2*hidden -> hidden -> one logit (no sigmoid: the loss takes logits).

    Args:
        hidden_dim: width of the last hidden layer.
        shape: input image shape ``(C, H, W)``.
    """

    def __init__(self, hidden_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden_dim * 2),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim * 2, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B,)`` logits."""
        return self.net(images).squeeze(1)


class GAN(GenerativeModel):
    """Unconditional MLP GAN.

    The networks are the attributes ``generator`` and ``discriminator``; initial weights
    depend only on ``config.seed``.

    Args:
        config: the ``gan`` training section.
        spec: data shape; labels are ignored.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str] = "gan"
    kind: ClassVar[Literal["gan", "vae", "diffusion"]] = "gan"
    conditional: ClassVar[bool] = False
    network_names: ClassVar[tuple[str, ...]] = ("generator", "discriminator")

    def __init__(self, config: GANConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        # Build on CPU under a private seed, then move: same seed -> same weights on any
        # device, and the caller's global RNG stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            generator = MLPGenerator(config.latent_dim, config.hidden_dim, spec.shape)
            discriminator = MLPDiscriminator(config.hidden_dim, spec.shape)
        self.generator: nn.Module = generator.to(self.device)
        self.discriminator: nn.Module = discriminator.to(self.device)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.make_adam(self.generator), "discriminator": self.make_adam(self.discriminator)}

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One discriminator step, then one generator step, on the same fake batch.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            labels: ``(B,)``; unused (unconditional model).

        Returns:
            ``loss_d``, ``loss_g`` and the mean discriminator probabilities ``d_real`` and
            ``d_fake`` (before the discriminator update), detached 0-dim tensors.
        """
        del labels
        batch = images.shape[0]
        z = torch.randn(batch, self.config.latent_dim, generator=self.rng, device=self.device)
        ones = torch.ones(batch, device=self.device)
        zeros = torch.zeros(batch, device=self.device)
        with self.autocast():
            fake = self.generator(z)  # (B, C, H, W)

        # Discriminator: real -> 1, fake -> 0. fake.detach(): no gradient into G here.
        opt_d = self.optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            logit_real = self.discriminator(images).float()  # (B,)
            logit_fake = self.discriminator(fake.detach()).float()
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
            logit_gen = self.discriminator(fake).float()
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

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images from the generator in eval mode (batch-norm running statistics).

        Args:
            n: number of images.
            labels: ignored (unconditional model).
            generator: noise source; ``self.rng`` (and so training) is untouched when given.

        Returns:
            ``(n, C, H, W)`` uint8 on ``self.device``.
        """
        del labels
        # The bare network: a DDP wrapper would start collectives (buffer broadcast) that a
        # rank-0-only sampler would never see answered.
        net_g = self.net("generator")
        was_training = net_g.training
        net_g.eval()
        try:
            rng = generator if generator is not None else self.rng
            z = torch.randn(n, self.config.latent_dim, generator=rng, device=self.device)  # (n, latent_dim)
            with self.autocast():
                images = net_g(z)  # (n, C, H, W)
        finally:
            net_g.train(was_training)
        return to_uint8(images)
