"""Deep convolutional GAN (Radford et al. 2015, https://arxiv.org/abs/1511.06434).

The paper's recipe, sized for 28x28 and 32x32 images: the generator projects ``z`` to a
small feature map and doubles its size with strided transposed convolutions (batch norm +
ReLU, tanh out); the discriminator halves it with strided convolutions (LeakyReLU 0.2,
batch norm on every layer but the first) down to one logit. No pooling, no fully connected
hidden layers, weights drawn from N(0, 0.02). Losses as in ``gan.py``: binary
cross-entropy on logits and the non-saturating generator loss.

    28x28: z -> (2g, 7, 7) -> (g, 14, 14) -> (C, 28, 28);   D mirrors it with d, 2d
    32x32: z -> (4g, 4, 4) -> (2g, 8, 8) -> (g, 16, 16) -> (C, 32, 32)
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import DCGANConfig
from components.models.base import DataSpec, GenerativeModel, to_uint8


def feature_map_plan(size: int) -> tuple[int, int]:
    """How many stride-2 stages turn a ``base x base`` map (4 <= base <= 7) into ``size x size``.

    Args:
        size: image height (= width), e.g. 28 or 32.

    Returns:
        ``(levels, base)``: 28 -> (2, 7), 32 -> (3, 4), 64 -> (4, 4).
    """
    levels, base = 0, size
    while base % 2 == 0 and base > 7:
        levels, base = levels + 1, base // 2
    if levels == 0 or not 4 <= base <= 7:
        raise ValueError(f"DCGAN needs a size of the form base * 2**k with 4 <= base <= 7 and k >= 1, got {size}")
    return levels, base


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class ConvGenerator(nn.Module):
    """``z`` -> ``(g * 2**(L-1), base, base)`` -> ... -> ``(C, H, W)`` in [-1, 1].

    Args:
        latent_dim: size of ``z``.
        channels: feature maps of the last hidden layer (``g``); doubled at each coarser level.
        shape: output image shape ``(C, H, W)``, square.
    """

    def __init__(self, latent_dim: int, channels: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        if h != w:
            raise ValueError(f"DCGAN needs square images, got {h}x{w}")
        levels, base = feature_map_plan(h)
        width = channels * 2 ** (levels - 1)
        # "Project and reshape" as one transposed conv on a 1x1 map: (B, z, 1, 1) -> (B, width, base, base).
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width, base, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(levels - 1):  # each stage doubles the size and halves the channels
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, c, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` -> ``(B, C, H, W)``."""
        return self.net(z[:, :, None, None])  # (B, latent_dim, 1, 1) -> (B, C, H, W)


class ConvDiscriminator(nn.Module):
    """``(C, H, W)`` -> ``(d, H/2, W/2)`` -> ... -> ``(d * 2**(L-1), base, base)`` -> one logit.

    Args:
        channels: feature maps of the first layer (``d``); doubled at each coarser level.
        shape: input image shape ``(C, H, W)``, square.
    """

    def __init__(self, channels: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        if h != w:
            raise ValueError(f"DCGAN needs square images, got {h}x{w}")
        levels, base = feature_map_plan(h)
        width = channels
        # No batch norm on the first layer (Radford et al.: it made training unstable).
        layers: list[nn.Module] = [nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for _ in range(levels - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, base, 1, 0))  # (B, width, base, base) -> (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B,)`` logits."""
        return self.net(images).flatten()


class DCGAN(GenerativeModel):
    """Unconditional convolutional GAN.

    The networks are the attributes ``generator`` and ``discriminator``; initial weights
    depend only on ``config.seed``. The discriminator sees real and fake batches in separate
    forward passes, so its batch-norm statistics are never mixed across the two.

    Args:
        config: the ``dcgan`` training section.
        spec: data shape (square, 28x28 or 32x32); labels are ignored.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str] = "dcgan"
    kind: ClassVar[Literal["gan", "vae", "diffusion"]] = "gan"
    conditional: ClassVar[bool] = False
    network_names: ClassVar[tuple[str, ...]] = ("generator", "discriminator")

    def __init__(self, config: DCGANConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        # Build on CPU under a private seed, then move: same seed -> same weights on any
        # device, and the caller's global RNG stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            generator = ConvGenerator(config.latent_dim, config.g_channels, spec.shape)
            discriminator = ConvDiscriminator(config.d_channels, spec.shape)
            generator.apply(dcgan_init)
            discriminator.apply(dcgan_init)
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

        # Discriminator: real -> 1, fake -> 0, as two forward passes (per-batch BN statistics,
        # as in pytorch/examples dcgan). fake.detach(): no gradient into G here.
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
