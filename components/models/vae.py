"""Variational autoencoder (Kingma & Welling 2013, https://arxiv.org/abs/1312.6114).

The encoder maps an image to the mean and log-variance of a diagonal Gaussian ``q(z|x)``;
the decoder maps a latent ``z`` to per-pixel Bernoulli logits. Training maximises the ELBO:
reconstruction (BCE on pixels in [0, 1], summed per image) plus the analytic KL to N(0, I).

``architecture="conv"``: two stride-2 convolutions (28 -> 14 -> 7, or 32 -> 16 -> 8) and the
mirror-image transposed convolutions; ``"mlp"``: two hidden layers each way. ``hidden_dim``
is the base width: conv channels ``hidden_dim, 2*hidden_dim``; MLP widths ``4*hidden_dim,
2*hidden_dim``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.data.spec import DataSpec
from components.models.base import GenerativeModel, build_seeded, to_uint8

if TYPE_CHECKING:
    from components.config import VAEConfig


# --------------------------------------------------------------------------- networks
class ConvEncoder(nn.Module):
    """``(B, C, H, W)`` in [-1, 1] -> ``(mu, logvar)``, each ``(B, latent_dim)``. H, W divisible by 4."""

    def __init__(self, spec: DataSpec, hidden_dim: int, latent_dim: int):
        super().__init__()
        h, w = spec.height // 4, spec.width // 4
        self.features = nn.Sequential(
            nn.Conv2d(spec.channels, hidden_dim, 4, stride=2, padding=1),  # (B, h, H/2, W/2)
            nn.SiLU(),
            nn.Conv2d(hidden_dim, 2 * hidden_dim, 4, stride=2, padding=1),  # (B, 2h, H/4, W/4)
            nn.SiLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * hidden_dim * h * w, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """``(B, latent_dim)`` -> pixel logits ``(B, C, H, W)``."""

    def __init__(self, spec: DataSpec, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.grid = (2 * hidden_dim, spec.height // 4, spec.width // 4)
        self.project = nn.Linear(latent_dim, self.grid[0] * self.grid[1] * self.grid[2])
        self.body = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(2 * hidden_dim, hidden_dim, 4, stride=2, padding=1),  # (B, h, H/2, W/2)
            nn.SiLU(),
            nn.ConvTranspose2d(hidden_dim, spec.channels, 4, stride=2, padding=1),  # (B, C, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.project(z).view(-1, *self.grid))


class MLPEncoder(nn.Module):
    """``(B, C, H, W)`` -> ``(mu, logvar)``, each ``(B, latent_dim)``."""

    def __init__(self, spec: DataSpec, hidden_dim: int, latent_dim: int):
        super().__init__()
        pixels = spec.channels * spec.height * spec.width
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(pixels, 4 * hidden_dim),
            nn.SiLU(),
            nn.Linear(4 * hidden_dim, 2 * hidden_dim),
            nn.SiLU(),
            nn.Linear(2 * hidden_dim, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """``(B, latent_dim)`` -> pixel logits ``(B, C, H, W)``."""

    def __init__(self, spec: DataSpec, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.shape = spec.shape
        pixels = spec.channels * spec.height * spec.width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 2 * hidden_dim),
            nn.SiLU(),
            nn.Linear(2 * hidden_dim, 4 * hidden_dim),
            nn.SiLU(),
            nn.Linear(4 * hidden_dim, pixels),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.shape)


def build_networks(
    architecture: Literal["mlp", "conv"], spec: DataSpec, hidden_dim: int, latent_dim: int
) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair for ``architecture``."""
    if architecture == "conv":
        if spec.height % 4 or spec.width % 4:
            raise ValueError(f"conv VAE needs height and width divisible by 4, got {spec.height}x{spec.width}")
        return ConvEncoder(spec, hidden_dim, latent_dim), ConvDecoder(spec, hidden_dim, latent_dim)
    return MLPEncoder(spec, hidden_dim, latent_dim), MLPDecoder(spec, hidden_dim, latent_dim)


# --------------------------------------------------------------------------- the loss
def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row: ``(B, D)`` -> ``(B,)``.

    Analytic form, Kingma & Welling 2013, appendix B: -1/2 * sum(1 + log s^2 - mu^2 - s^2).
    """
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)


def reconstruction_nll(logits: Tensor, images: Tensor) -> Tensor:
    """Bernoulli negative log-likelihood in nats per image: ``(B, C, H, W)`` x2 -> ``(B,)``.

    ``images`` are in [-1, 1] and mapped to [0, 1] as BCE targets. Grey levels are not
    binary, so this is the usual BCE surrogate, not a normalised density (see the continuous
    Bernoulli, Loaiza-Ganem & Cunningham 2019): comparable between VAEs, not to other models.
    """
    targets = (images.float() + 1) / 2
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").flatten(1).sum(dim=1)


# --------------------------------------------------------------------------- the model
class VAE(GenerativeModel):
    """A VAE trained with one Adam over encoder and decoder.

    Args:
        config: the ``vae`` training section.
        spec: data shape (``num_classes`` is unused: the VAE is unconditional).
        device: where networks, optimiser and generator live.
    """

    family: ClassVar[str] = "vae"
    kind: ClassVar[Literal["gan", "vae", "diffusion"]] = "vae"
    network_names: ClassVar[tuple[str, ...]] = ("encoder", "decoder")
    # 702 steps (the earlier default) learn (FID 294 against ceilings of ~1,000-1,500); as the GANs, 500
    min_useful_steps: ClassVar[int | None] = 500

    def __init__(self, config: VAEConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        self.config: VAEConfig = config
        encoder, decoder = build_seeded(
            config.seed, lambda: build_networks(config.architecture, spec, config.hidden_dim, config.latent_dim))
        self.encoder: nn.Module = encoder.to(self.device)
        self.decoder: nn.Module = decoder.to(self.device)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.make_adam(self.encoder, self.decoder)}

    def _encode_decode(
        self, images: Tensor, generator: torch.Generator | None, bare: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode, draw ``z`` (or take ``mu`` when ``generator`` is None), decode.

        ``bare=True`` uses the unwrapped networks (evaluation on one rank must not run DDP's
        collectives).

        Returns:
            ``(logits (B, C, H, W), mu (B, D), logvar (B, D))``, mu/logvar in float32.
        """
        encoder, decoder = (self.net("encoder"), self.net("decoder")) if bare else (self.encoder, self.decoder)
        with self.autocast():
            mu, logvar = encoder(images)
        mu, logvar = mu.float(), logvar.float()
        z = mu
        if generator is not None:
            # Reparameterisation trick: z = mu + sigma * eps keeps z differentiable in (mu, sigma).
            eps = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + (0.5 * logvar).exp() * eps
        with self.autocast():
            logits = decoder(z)
        return logits, mu, logvar

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One Adam step on the negative ELBO of ``images`` ``(B, C, H, W)`` in [-1, 1].

        Returns:
            ``loss`` (recon + kl_weight * kl), ``recon`` and ``kl``, per-image means, detached.
        """
        del labels  # unconditional
        logits, mu, logvar = self._encode_decode(images, self.rng)
        recon = reconstruction_nll(logits, images).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        loss = recon + self.config.kl_weight * kl

        optimizer = self.optimizers["vae"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.clip(self.encoder)  # per network: the norm of each part is capped separately
        self.clip(self.decoder)
        optimizer.step()
        self.step += 1
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}

    def held_out_metrics(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Test-set negative ELBO and its two terms (nats per image), at the posterior mean."""
        del labels, generator
        scores = self.elbo(images)
        return {"test_elbo": scores["neg_elbo"], "test_recon": scores["recon"], "test_kl": scores["kl"]}

    @torch.no_grad()
    def elbo(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Negative ELBO on held-out images, per-image means in nats (always with kl_weight = 1).

        With ``generator=None`` the decoder sees ``z = mu`` (the mean of q): deterministic and
        the usual "reconstruction at the posterior mean", a slightly optimistic stand-in for
        the expectation. With a generator it is the one-sample Monte Carlo estimate of the
        ELBO, unbiased. The KL is analytic in both cases.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            generator: noise source for one sample of z, or None for the mean of q.

        Returns:
            ``neg_elbo``, ``recon`` and ``kl``: 0-dim float tensors.
        """
        logits, mu, logvar = self._encode_decode(images, generator, bare=True)
        recon = reconstruction_nll(logits, images).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        return {"neg_elbo": recon + kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``z ~ N(0, I)``: ``(n, C, H, W)`` uint8 (pixel = 255 * sigmoid(logit)).

        Args:
            n: number of images.
            labels: ignored (unconditional).
            generator: noise source; ``self.rng`` when None.
        """
        del labels
        gen = self.rng if generator is None else generator
        z = torch.randn((n, self.config.latent_dim), generator=gen, device=self.device)
        with self.autocast():
            logits = self.net("decoder")(z)  # (n, C, H, W); no dropout/norm, so the mode is irrelevant
        return to_uint8(logits.float().sigmoid() * 2 - 1)
