"""Deep convolutional GAN (Radford et al. 2015, https://arxiv.org/abs/1511.06434).

The paper's recipe, sized for 28x28 and 32x32 images: the generator projects ``z`` to a
small feature map and doubles its size with strided transposed convolutions (batch norm +
ReLU, tanh out); the discriminator halves it with strided convolutions (LeakyReLU 0.2,
batch norm on every layer but the first) down to one logit. No pooling, no fully connected
hidden layers, weights drawn from N(0, 0.02). Training step and sampler are ``GAN``'s
(``gan.py``): binary cross-entropy on logits and the non-saturating generator loss.

    28x28: z -> (2g, 7, 7) -> (g, 14, 14) -> (C, 28, 28);   D mirrors it with d, 2d
    32x32: z -> (4g, 4, 4) -> (2g, 8, 8) -> (g, 16, 16) -> (C, 32, 32)
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from components.config import DCGANConfig
from components.models.gan import GAN


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


def square_plan(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``(C, levels, base)`` for a square image ``shape`` ``(C, H, W)``: its channels and ``feature_map_plan(H)``."""
    c, h, w = shape
    if h != w:
        raise ValueError(f"DCGAN needs square images, got {h}x{w}")
    return (c, *feature_map_plan(h))


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
        c, levels, base = square_plan(shape)
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
        c, levels, base = square_plan(shape)
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


class DCGAN(GAN):
    """Unconditional convolutional GAN: ``GAN``'s training step and sampler, convolutional networks.

    Args:
        config: the ``dcgan`` training section.
        spec: data shape (square, 28x28 or 32x32); labels are ignored.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str] = "dcgan"
    # 585 steps (5 epochs x 128) gave blobs, 1,872 (the default's length) gave FID 156 at lr 2e-4 (params.yaml, README)
    min_useful_steps: ClassVar[int | None] = 600
    config: DCGANConfig

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """Convolutional ``(generator, discriminator)`` with Radford et al.'s initial weights."""
        generator = ConvGenerator(self.config.latent_dim, self.config.g_channels, self.spec.shape)
        discriminator = ConvDiscriminator(self.config.d_channels, self.spec.shape)
        generator.apply(dcgan_init)
        discriminator.apply(dcgan_init)
        return generator, discriminator
