"""MLP GAN (Goodfellow et al. 2014, https://arxiv.org/abs/1406.2661).

Two fully connected networks: the generator maps noise ``z`` to an image, the
discriminator maps an image to one logit. Trained with binary cross-entropy on logits
and the non-saturating generator loss (the generator maximises ``log D(G(z))`` instead of
minimising ``log(1 - D(G(z)))``, which gives strong gradients early in training), plus an R1
penalty on D's gradient at the reals (``config.r1_gamma``; ``r1_penalty`` says why). With
``config.ema_decay`` set, the sampler draws from an exponential moving average of G's weights: G's
last weights chase the discriminator of the moment, and their average covers more of the data
(CGAN FID 83 -> 73, recall 0.15 -> 0.19 at the default, docs/benchmarks.md).

``GAN`` owns the adversarial step and the sampler of every GAN family: DCGAN (``dcgan.py``)
overrides only ``build_networks``; CGAN (``cgan.py``) also feeds labels through ``condition``.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import GANConfig
from components.data.spec import DataSpec
from components.models.base import GenerativeModel, build_seeded, to_uint8, update_ema


def generator_layers(in_dim: int, hidden_dim: int, out_dim: int) -> list[nn.Module]:
    """``in_dim`` -> hidden -> 2*hidden -> ``out_dim``, tanh output in [-1, 1].

    Batch norm on the second hidden layer only: the first layer sees raw Gaussian noise,
    which is already normalised (as in the classic PyTorch MLP GAN).
    """
    return [
        nn.Linear(in_dim, hidden_dim),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim, hidden_dim * 2),
        nn.BatchNorm1d(hidden_dim * 2),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim * 2, out_dim),
        nn.Tanh(),
    ]


def discriminator_layers(in_dim: int, hidden_dim: int) -> list[nn.Module]:
    """``in_dim`` -> 2*hidden -> hidden -> one logit (no sigmoid: the loss takes logits)."""
    return [
        nn.Linear(in_dim, hidden_dim * 2),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim * 2, hidden_dim),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim, 1),
    ]


def r1_penalty(logit_real: Tensor, images: Tensor) -> Tensor:
    """Mean squared norm of D's gradient at the real images (Mescheder et al. 2018, https://arxiv.org/abs/1801.04406).

    Penalising it keeps D flat on the data: the random, pixel-by-pixel part of an MLP
    discriminator's first layer no longer reaches G's gradient, which otherwise leaves G's
    samples speckled (noise that the classifier's features, and so FID and recall, punish).

    Args:
        logit_real: ``(B,)`` D's logits for ``images``, still in the graph.
        images: ``(B, C, H, W)`` real images with ``requires_grad``.

    Returns:
        0-dim ``mean_b ||d logit_b / d images_b||^2`` in float32, differentiable (for D's step).
    """
    (grad,) = torch.autograd.grad(logit_real.sum(), images, create_graph=True)  # (B, C, H, W)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class MLPGenerator(nn.Module):
    """``z`` -> hidden -> 2*hidden -> image (``generator_layers``).

    Args:
        latent_dim: size of ``z``.
        hidden_dim: width of the first hidden layer.
        shape: output image shape ``(C, H, W)``.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        c, h, w = shape
        self.net = nn.Sequential(*generator_layers(latent_dim, hidden_dim, c * h * w))

    def forward(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` -> ``(B, C, H, W)``."""
        return self.net(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    """Image -> 2*hidden -> hidden -> one logit (``discriminator_layers``).

    Args:
        hidden_dim: width of the last hidden layer.
        shape: input image shape ``(C, H, W)``.
    """

    def __init__(self, hidden_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = shape
        self.net = nn.Sequential(nn.Flatten(), *discriminator_layers(c * h * w, hidden_dim))

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B,)`` logits."""
        return self.net(images).squeeze(1)


class GAN(GenerativeModel):
    """Unconditional MLP GAN.

    The networks are the attributes ``generator`` and ``discriminator``, and ``generator_ema``
    (G's moving average, sampled from) when ``config.ema_decay`` is set; initial weights depend only
    on ``config.seed``. The discriminator sees real and fake batches in separate forward passes,
    so a discriminator with batch norm (DCGAN's) never mixes their statistics.

    Args:
        config: the ``gan`` training section.
        spec: data shape; labels are ignored.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str] = "gan"
    kind: ClassVar[Literal["gan", "vae", "diffusion"]] = "gan"
    conditional: ClassVar[bool] = False
    network_names: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    # 55 steps (a 1,500-image folder) learned nothing; 1,170 (the earlier default) learn (cgan FID 220 against
    # untrained ceilings of ~1,000-1,500): 500 sits well between (cgan inherits it)
    min_useful_steps: ClassVar[int | None] = 500

    def __init__(self, config: GANConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        generator, discriminator = build_seeded(config.seed, self.build_networks)
        self.generator: nn.Module = generator.to(self.device)
        self.discriminator: nn.Module = discriminator.to(self.device)
        if config.ema_decay is not None:
            self.shadow_names = ("generator_ema",)
            self.generator_ema: nn.Module = copy.deepcopy(self.generator).requires_grad_(False).eval()

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """``(generator, discriminator)`` for ``self.config`` and ``self.spec``, on CPU (seeded by the caller)."""
        return (MLPGenerator(self.config.latent_dim, self.config.hidden_dim, self.spec.shape),
                MLPDiscriminator(self.config.hidden_dim, self.spec.shape))

    def condition(self, labels: Tensor) -> tuple[Tensor, ...]:
        """The networks' inputs beside ``z`` or the images: none for an unconditional GAN."""
        del labels
        return ()

    def sample_condition(self, n: int, labels: Tensor | None) -> tuple[Tensor, ...]:
        """``condition`` for ``n`` samples of the requested ``labels`` (ignored here)."""
        del n, labels
        return ()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.make_adam(self.generator), "discriminator": self.make_adam(self.discriminator)}

    def discriminator_step(self, images: Tensor, fake: Tensor, cond: tuple[Tensor, ...], ones: Tensor,
                           zeros: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of D: real -> 1, fake -> 0, as two forward passes (per-batch BN statistics in
        DCGAN, as in pytorch/examples dcgan), plus the R1 penalty at the reals.

        Args:
            images: ``(B, C, H, W)`` reals (``requires_grad`` when ``config.r1_gamma`` > 0).
            fake: ``(B, C, H, W)`` G's output, detached.
            cond: ``condition(labels)``; ones, zeros: ``(B,)`` targets.

        Returns:
            ``(loss_d, logit_real, logit_fake)``: the loss and ``(B,)`` logits, before the update.
        """
        opt_d = self.optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            logit_real = self.discriminator(images, *cond).float()  # (B,)
            logit_fake = self.discriminator(fake, *cond).float()
        loss_d = (F.binary_cross_entropy_with_logits(logit_real, ones)
                  + F.binary_cross_entropy_with_logits(logit_fake, zeros))
        if self.config.r1_gamma:
            loss_d = loss_d + self.config.r1_gamma / 2 * r1_penalty(logit_real, images)
        loss_d.backward()
        self.clip(self.discriminator)
        opt_d.step()
        return loss_d, logit_real, logit_fake

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``config.d_steps`` discriminator steps, each against fresh fakes, then one generator step on the last fakes.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            labels: ``(B,)`` int64; reach the networks only through ``condition``.

        Returns:
            ``loss_d``, ``loss_g`` and the mean discriminator probabilities ``d_real`` and
            ``d_fake`` (the last discriminator step's, before its update), detached 0-dim tensors.
        """
        cond = self.condition(labels)  # () or (labels,): the fakes are asked for the real batch's classes
        batch = images.shape[0]
        ones = torch.ones(batch, device=self.device)
        zeros = torch.zeros(batch, device=self.device)
        if self.config.r1_gamma:
            images = images.detach().requires_grad_(True)  # for the R1 penalty's gradient w.r.t. the reals
        for d_step in range(self.config.d_steps):
            z = torch.randn(batch, self.config.latent_dim, generator=self.rng, device=self.device)
            last = d_step == self.config.d_steps - 1
            with self.autocast(), torch.set_grad_enabled(last):  # only the last fakes train G: no graph before
                fake = self.generator(z, *cond)  # (B, C, H, W)
            # fake.detach(): no gradient into G in D's step
            loss_d, logit_real, logit_fake = self.discriminator_step(images, fake.detach(), cond, ones, zeros)

        # Generator: non-saturating loss, fake labelled real, through the updated D.
        # D also receives gradients here; they are discarded by the next zero_grad.
        opt_g = self.optimizers["generator"]
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            logit_gen = self.discriminator(fake, *cond).float()
        loss_g = F.binary_cross_entropy_with_logits(logit_gen, ones)
        loss_g.backward()
        self.clip(self.generator)
        opt_g.step()
        if self.config.ema_decay is not None:
            update_ema(self.generator_ema, self.net("generator"), self.config.ema_decay, self.step)

        self.step += 1
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(logit_real.detach()).mean(),
            "d_fake": torch.sigmoid(logit_fake.detach()).mean(),
        }

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images from the generator (its moving average, if kept) in eval mode (batch-norm running
        statistics, copied from G's into the average).

        Args:
            n: number of images.
            labels: ``(n,)`` classes for a conditional GAN (``sample_condition``); ignored here.
            generator: noise source; ``self.rng`` (and so training) is untouched when given.

        Returns:
            ``(n, C, H, W)`` uint8 on ``self.device``.
        """
        cond = self.sample_condition(n, labels)
        # The bare network: a DDP wrapper would start collectives (buffer broadcast) that a
        # rank-0-only sampler would never see answered.
        net_g = self.generator_ema if self.config.ema_decay is not None else self.net("generator")
        was_training = net_g.training
        net_g.eval()
        try:
            rng = generator if generator is not None else self.rng
            z = torch.randn(n, self.config.latent_dim, generator=rng, device=self.device)  # (n, latent_dim)
            with self.autocast():
                images = net_g(z, *cond)  # (n, C, H, W)
        finally:
            net_g.train(was_training)
        return to_uint8(images)
