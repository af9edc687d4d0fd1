"""The baseline: textbook plain-PyTorch training loops over the project's own networks.

What a tutorial would write: a ``DataLoader`` over a ``TensorDataset`` of float images,
``torch.optim.Adam`` (not fused), fp32, eager, ``.item()`` on every step. The networks are
those of a freshly built model (``model.networks()``), so (a) and (b) train identical
architectures from identical initial weights. Gradient clipping and weight decay are off in
params.yaml and left out here. One step function per family kind: GAN-like, VAE, DDPM.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import timed
from components.models.base import GenerativeModel

Step = Callable[[Tensor, Tensor], float]


def gan_step(model: GenerativeModel) -> Step:
    """pytorch/examples' DCGAN step: D on real then fake (two backwards), then G, non-saturating."""
    cfg, nets, device = model.config, model.networks(), model.device
    gen, disc = nets["generator"], nets["discriminator"]
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    criterion = nn.BCEWithLogitsLoss()

    def step(x: Tensor, y: Tensor) -> float:
        b = x.size(0)
        cond = (y,) if model.is_conditional else ()  # CGAN: both networks see the class
        real_target, fake_target = torch.ones(b, device=device), torch.zeros(b, device=device)
        disc.zero_grad()
        err_real = criterion(disc(x, *cond).view(-1), real_target)
        err_real.backward()
        fake = gen(torch.randn(b, cfg.latent_dim, device=device), *cond)  # (B, C, H, W)
        err_fake = criterion(disc(fake.detach(), *cond).view(-1), fake_target)
        err_fake.backward()
        opt_d.step()
        gen.zero_grad()
        err_g = criterion(disc(fake, *cond).view(-1), real_target)
        err_g.backward()
        opt_g.step()
        return (err_real + err_fake).item() + err_g.item()

    return step


def vae_step(model: GenerativeModel) -> Step:
    """Kingma & Welling's ELBO as in pytorch/examples' VAE: summed BCE + analytic KL, per image."""
    cfg, nets = model.config, model.networks()
    enc, dec = nets["encoder"], nets["decoder"]
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr, betas=cfg.adam_betas)

    def step(x: Tensor, y: Tensor) -> float:
        b = x.size(0)
        mu, logvar = enc(x)  # (B, D) each
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = dec(z)  # (B, C, H, W)
        recon = F.binary_cross_entropy_with_logits(logits, (x + 1) / 2, reduction="sum") / b
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
        loss = recon + cfg.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def ddpm_step(model: GenerativeModel) -> Step:
    """Ho et al.'s simple loss with the model's noise schedule, and a per-parameter EMA update."""
    cfg, nets, device = model.config, model.networks(), model.device
    net, ema = nets["denoiser"], nets["ema"]
    alphas_cumprod = model.schedule.alphas_cumprod  # (T,)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.adam_betas)

    def step(x: Tensor, y: Tensor) -> float:
        b = x.size(0)
        t = torch.randint(0, cfg.timesteps, (b,), device=device)
        noise = torch.randn_like(x)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
        labels = None
        if cfg.conditional:  # classifier-free guidance training: drop labels to the null class
            labels = torch.where(torch.rand(b, device=device) < cfg.cond_drop_prob, model.null_class, y)
        loss = F.mse_loss(net(x_t, t, labels), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.mul_(cfg.ema_decay).add_(p, alpha=1 - cfg.ema_decay)
        return loss.item()

    return step


STEPS: dict[str, Callable[[GenerativeModel], Step]] = {"gan": gan_step, "vae": vae_step, "diffusion": ddpm_step}


class TextbookRunner:
    """Run the textbook loop one epoch at a time.

    Args:
        model: a freshly built model; only its networks (and DDPM's schedule) are used.
        images: uint8 ``(N, C, H, W)``; labels: int ``(N,)``.
        batch_size: images per step.
    """

    def __init__(self, model: GenerativeModel, images: np.ndarray, labels: np.ndarray, batch_size: int):
        self.device = model.device
        data = torch.from_numpy(images).float() / 127.5 - 1  # (N, C, H, W) float in [-1, 1]
        dataset = TensorDataset(data, torch.from_numpy(labels).long())
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
        self.step = STEPS[model.kind](model)
        for net in model.networks().values():
            net.train()
        self.last_loss = float("nan")

    def _epoch(self) -> int:
        seen = 0
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            self.last_loss = self.step(x, y)
            seen += x.size(0)
        return seen

    def epoch(self) -> tuple[int, float]:
        """Train one epoch; ``(images, seconds)``."""
        return timed(self._epoch, self.device)
