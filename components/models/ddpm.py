"""Denoising diffusion (Ho et al. 2020, https://arxiv.org/abs/2006.11239) in one file.

Three parts, as in diffusers and lucidrains' ``GaussianDiffusion``:

- ``NoiseSchedule``: parameter-free β schedule with ``add_noise`` (training), ``step``
  (ancestral sampling) and ``ddim_step`` (DDIM, Song et al. 2020); the two samplers
  (``AncestralSampler``, ``DDIMSampler``, chosen by name in ``SAMPLERS``) walk their timesteps
  with one ``step`` verb each, as diffusers' schedulers do.
- ``UNet``: the ε-prediction network, optionally class-conditional with a learned "null"
  class for classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598).
- ``DDPM``: the trainable model: one Adam on the UNet, an EMA copy used for sampling.

Timesteps are 0-based: ``t = 0 .. T-1`` here is the paper's ``t = 1 .. T``, so
``alphas_cumprod[t] = prod_{s <= t} (1 - beta_s)``.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.data.spec import DataSpec
from components.models.base import GenerativeModel, build_seeded, to_uint8, update_ema
from components.models.sampling import SamplingOption

if TYPE_CHECKING:
    from components.config import DDPMConfig


# =========================================================================== schedule
def make_betas(
    timesteps: int, schedule: Literal["linear", "cosine"], beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """β_0..β_{T-1} in float64, ``(T,)``.

    ``linear``: Ho et al. 2020 (1e-4 .. 0.02 for T = 1000; not rescaled for other T).
    ``cosine``: Nichol & Dhariwal 2021, eq. 17 (https://arxiv.org/abs/2102.09672):
    ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, β clipped at 0.999.
    """
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    s = 0.008
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


class NoiseSchedule(nn.Module):
    """The forward process q and the two reverse samplers; no parameters, only buffers.

    Args:
        timesteps: T.
        schedule: ``"linear"`` or ``"cosine"``.
        beta_start, beta_end: the linear schedule's end points.
    """

    def __init__(
        self,
        timesteps: int,
        schedule: Literal["linear", "cosine"] = "cosine",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ):
        super().__init__()
        self.timesteps = timesteps
        betas = make_betas(timesteps, schedule, beta_start, beta_end)  # float64 for accuracy
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            # Ho et al. eq. 7: the posterior q(x_{t-1} | x_t, x_0) = N(c0·x_0 + ct·x_t, β̃_t).
            "posterior_variance": betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod),
            "posterior_coef_x0": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_coef_xt": (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)  # rebuilt from config, never saved

    def min_snr_weight(self, t: Tensor, gamma: float) -> Tensor:
        """Min-SNR-γ loss weights for ε-prediction, min(SNR_t, γ) / SNR_t with SNR_t = ᾱ_t / (1 - ᾱ_t).

        Hang et al. 2023 (https://arxiv.org/abs/2303.09556): the nearly clean timesteps (high SNR)
        are easy and their gradients conflict with the noisy ones'; capping their weight lets a
        short run spend its steps where the samples are decided.

        Args:
            t: ``(B,)`` int64 timesteps in [0, T).
            gamma: the cap γ (5 in the paper).

        Returns:
            ``(B,)`` float32 weights in (0, 1].
        """
        abar = self.alphas_cumprod[t]
        snr = abar / (1 - abar)
        return snr.clamp(max=gamma) / snr

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) in one step: sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·ε.

        Args:
            x0: ``(B, C, H, W)`` clean images.
            noise: ``(B, C, H, W)`` standard normal ε.
            t: ``(B,)`` int64 timesteps in [0, T).

        Returns:
            ``(B, C, H, W)`` noisy images.
        """
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.dtype)  # (B, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_x0(self, eps: Tensor, t: int, x_t: Tensor) -> Tensor:
        """x_0 implied by the predicted noise, clipped to the data range [-1, 1]."""
        abar = self.alphas_cumprod[t]
        return ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, eq. 11, variance β̃_t).

        With x_0 clipped, eq. 11's mean is written as the posterior mean of eq. 7 at the
        clipped x̂_0 (identical without clipping). No noise is added at t = 0.

        Args:
            eps: ``(B, C, H, W)`` predicted noise.
            t: current timestep (the same for the whole batch).
            x_t: ``(B, C, H, W)`` current sample.
            generator: noise source.
        """
        x0 = self.predict_x0(eps, t, x_t)
        mean = self.posterior_coef_x0[t] * x0 + self.posterior_coef_xt[t] * x_t
        if t == 0:
            return mean
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + self.posterior_variance[t].sqrt() * noise

    def ddim_step(
        self, eps: Tensor, t: int, t_prev: int, x_t: Tensor, eta: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """One DDIM step x_t -> x_{t_prev} (Song et al. 2020, eq. 12, https://arxiv.org/abs/2010.02502).

        ``eta = 0`` is deterministic; ``eta = 1`` matches the ancestral variance. ε is
        re-derived from the clipped x̂_0 so the two stay consistent.

        Args:
            eps: ``(B, C, H, W)`` predicted noise at ``t``.
            t, t_prev: current and next timestep; ``t_prev = -1`` means "to x_0" (ᾱ = 1).
            x_t: ``(B, C, H, W)`` current sample.
            eta: stochasticity.
            generator: noise source (unused when ``eta = 0``).
        """
        abar = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(abar)
        x0 = self.predict_x0(eps, t, x_t)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_prev = x_prev + sigma * noise
        return x_prev

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` distinct timesteps from T-1 down to 0, evenly spaced."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        grid = torch.linspace(self.timesteps - 1, 0, steps, dtype=torch.float64)
        return [int(v) for v in torch.floor(grid + 0.5)]  # round half up keeps them distinct


# =========================================================================== samplers
class AncestralSampler:
    """Ho et al. 2020, Algorithm 2: all T steps, each drawing fresh noise (``NoiseSchedule.step``).

    Args:
        schedule: the model's noise schedule.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float):
        del steps, eta  # always all T steps, variance β̃_t
        self.schedule = schedule

    def timesteps(self) -> list[tuple[int, int]]:
        """``(t, t_prev)`` pairs from T-1 down to 0."""
        return [(t, t - 1) for t in reversed(range(self.schedule.timesteps))]

    def step(self, eps: Tensor, t: int, t_prev: int, x: Tensor, generator: torch.Generator) -> Tensor:
        """x_t -> x_{t-1}; ``(B, C, H, W)`` in and out."""
        del t_prev
        return self.schedule.step(eps, t, x, generator)


class DDIMSampler:
    """Song et al. 2020: ``steps`` evenly spaced steps (``NoiseSchedule.ddim_step``); eta = 0 is deterministic.

    Args:
        schedule: the model's noise schedule.
        steps: how many of the T timesteps to visit.
        eta: stochasticity (1 = the ancestral variance).
    """

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float):
        self.schedule, self.eta = schedule, eta
        self.ts = schedule.ddim_timesteps(steps)

    def timesteps(self) -> list[tuple[int, int]]:
        """``(t, t_prev)`` pairs; ``t_prev = -1`` is the last step, to x_0."""
        return list(zip(self.ts, [*self.ts[1:], -1], strict=True))

    def step(self, eps: Tensor, t: int, t_prev: int, x: Tensor, generator: torch.Generator) -> Tensor:
        """x_t -> x_{t_prev}; ``(B, C, H, W)`` in and out."""
        return self.schedule.ddim_step(eps, t, t_prev, x, self.eta, generator)


#: the samplers by the name ``config.sampler`` and the served ``sampler`` option use
SAMPLERS: dict[str, type[AncestralSampler | DDIMSampler]] = {"ancestral": AncestralSampler, "ddim": DDIMSampler}


# =========================================================================== network
def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoidal embedding of timesteps: ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


def num_groups(channels: int) -> int:
    """GroupNorm groups: a divisor of ``channels``, at most 32, at least 4 channels a group when possible."""
    groups = math.gcd(channels, 32)
    while groups > 1 and channels // groups < 4:
        groups //= 2
    return groups


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time(+class) embedding added in between, residual skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(num_groups(out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``(B, in_ch, H, W)``, ``(B, emb_dim)`` -> ``(B, out_ch, H, W)``.

        Without autograd (sampling) the activations and sums are computed in place: the same
        values (bit for bit on the CPUs measured but one, where the last bits differed), with
        three fewer ``(B, C, H, W)`` allocations a block.
        """
        if torch.is_grad_enabled():
            h = self.conv1(F.silu(self.norm1(x)))
            h = h + self.emb(F.silu(emb))[:, :, None, None]
            h = self.conv2(F.silu(self.norm2(h)))
            return self.skip(x) + h
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h += self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.skip(x))


def _strided_like(param: nn.Parameter):
    """A gradient hook: ``grad`` as a view with ``param``'s strides where they differ only on size-1 dims."""

    def hook(grad: Tensor) -> Tensor:
        if grad.stride() == param.stride() or any(
                n != 1 and a != b for n, a, b in zip(grad.shape, grad.stride(), param.stride(), strict=True)):
            return grad
        return grad.as_strided(grad.shape, param.stride(), grad.storage_offset())  # same addresses: size-1 dims

    return hook


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        # With one head, proj's input (SDPA's output, reshaped) is a channels-last view, so autograd
        # gives this 1x1 weight a channels-last gradient: the same memory order, other strides on
        # its size-1 dims, which DDP compares literally ("Grad strides do not match bucket view
        # strides"). Re-striding the gradient as the weight (a view, no copy: same bits) fixes it.
        self.proj.weight.register_hook(_strided_like(self.proj.weight))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        out = self.proj(out.transpose(-1, -2).reshape(b, c, h, w))
        return x + out if torch.is_grad_enabled() else out.add_(x)  # in place when sampling, same bits


class Upsample(nn.Module):
    """Nearest-neighbour resize to the skip connection's size, then a 3x3 conv (7 -> 14 -> 28)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """ε-prediction UNet: ``(x_t (B, C, H, W), t (B,), labels (B,) | None) -> ε (B, C, H, W)``.

    Level ``i`` has ``base_channels * channel_mults[i]`` channels and ``num_res_blocks``
    residual blocks each way; a stride-2 conv halves the resolution between levels as long
    as it is even (28 -> 14 -> 7; 7 is never halved again). The middle block (lowest
    resolution) has self-attention when ``attention``. With ``num_classes = K`` a class
    embedding is added to the time embedding; index K is the learned "null" class.

    Args:
        spec: image shape.
        base_channels, channel_mults, num_res_blocks, attention: the architecture.
        num_classes: K for a conditional UNet, None for an unconditional one.
    """

    def __init__(
        self,
        spec: DataSpec,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.base_channels = base_channels
        self.num_classes = num_classes
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.in_conv = nn.Conv2d(spec.channels, base_channels, 3, padding=1)

        ch, size, skip_chs = base_channels, (spec.height, spec.width), []
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        halved: list[bool] = []
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, emb_dim))
                ch = base_channels * mult
                skip_chs.append(ch)
            self.down.append(blocks)
            halve = level < len(channel_mults) - 1 and size[0] % 2 == 0 and size[1] % 2 == 0
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if halve else nn.Identity())
            halved.append(halve)
            size = (size[0] // 2, size[1] // 2) if halve else size

        self.mid1 = ResBlock(ch, ch, emb_dim)
        self.mid_attn = SelfAttention(ch) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch + skip_chs.pop(), base_channels * channel_mults[level], emb_dim))
                ch = base_channels * channel_mults[level]
            self.up.append(blocks)
            # Undo the halving that happened after level - 1 on the way down.
            self.upsample.append(Upsample(ch) if level > 0 and halved[level - 1] else nn.Identity())

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, spec.channels, 3, padding=1)
        )

    def embed(self, t: Tensor, labels: Tensor | None) -> Tensor:
        """Time (+ class) embedding ``(B, 4 * base_channels)``; labels None -> the null class."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.class_emb(labels)
        return emb

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(t, labels)
        h = self.in_conv(x)  # (B, base, H, W)
        skips = []
        for blocks, downsample in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = downsample(h)  # (B, ch, H/2, W/2) or unchanged at the last/odd level
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, upsample in zip(self.up, self.upsample, strict=True):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if isinstance(upsample, Upsample):
                h = upsample(h, skips[-1].shape[-2:])  # back to the next skip's resolution
        return self.out(h)  # (B, C, H, W)


# =========================================================================== model
class DDPM(GenerativeModel):
    """ε-prediction diffusion model with an EMA denoiser and DDIM/ancestral samplers.

    Args:
        config: the ``ddpm`` training section.
        spec: data shape; ``num_classes`` sizes the class embedding when conditional.
        device: where networks, optimiser, schedule and generator live.
    """

    family: ClassVar[str] = "ddpm"
    kind: ClassVar[Literal["gan", "vae", "diffusion"]] = "diffusion"
    network_names: ClassVar[tuple[str, ...]] = ("denoiser",)
    shadow_names: tuple[str, ...] = ("ema",)
    sample_progress: ClassVar[bool] = True
    iterative_sampler: ClassVar[bool] = True
    # 12 steps stay untrained (FID 737), 702 (the earlier default) reach FID 194 and 820 FID 179
    # (docs/benchmarks.md); its EMA (decay 0.999) also needs some hundreds of steps to move
    min_useful_steps: ClassVar[int | None] = 500

    def __init__(self, config: DDPMConfig, spec: DataSpec, device: torch.device | str = "cpu"):
        super().__init__(config, spec, device)
        self.config: DDPMConfig = config
        denoiser = build_seeded(config.seed, lambda: UNet(
            spec,
            config.base_channels,
            config.channel_mults,
            config.num_res_blocks,
            config.attention,
            spec.num_classes if config.conditional else None,
        ))
        self.denoiser: nn.Module = denoiser.to(self.device)
        self.ema: nn.Module = copy.deepcopy(denoiser).requires_grad_(False).eval().to(self.device)
        self.schedule = NoiseSchedule(config.timesteps, config.schedule, config.beta_start, config.beta_end)
        self.schedule.to(self.device)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"denoiser": self.make_adam(self.denoiser)}

    @property
    def is_conditional(self) -> bool:
        return self.config.conditional

    @property
    def null_class(self) -> int:
        """The class index that means "no label" (classifier-free guidance)."""
        return self.spec.num_classes

    # ---- training -------------------------------------------------------------------
    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One Adam step on the simple loss ||ε - ε_θ(x_t, t)||² (Ho et al. 2020, eq. 14).

        With ``config.min_snr_gamma`` set, each image's term is weighted by
        ``NoiseSchedule.min_snr_weight`` of its timestep.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            labels: ``(B,)`` int64; used only when conditional, replaced by the null class
                with probability ``cond_drop_prob``.

        Returns:
            ``{"loss": 0-dim detached tensor}``.
        """
        b = images.shape[0]
        t = torch.randint(0, self.config.timesteps, (b,), generator=self.rng, device=self.device)
        noise = torch.randn(images.shape, generator=self.rng, device=self.device, dtype=images.dtype)
        x_t = self.schedule.add_noise(images, noise, t)
        cond = None
        if self.is_conditional:
            drop = torch.rand(b, generator=self.rng, device=self.device) < self.config.cond_drop_prob
            cond = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        with self.autocast():
            pred = self.denoiser(x_t, t, cond)
        if self.config.min_snr_gamma is None:
            loss = F.mse_loss(pred.float(), noise.float())
        else:
            per_image = (pred.float() - noise.float()).pow(2).flatten(1).mean(1)  # (B,)
            loss = (self.schedule.min_snr_weight(t, self.config.min_snr_gamma) * per_image).mean()

        optimizer = self.optimizers["denoiser"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.clip(self.denoiser)
        optimizer.step()
        update_ema(self.ema, self.net("denoiser"), self.config.ema_decay, self.step)
        self.step += 1
        return {"loss": loss.detach()}

    # ---- evaluation -----------------------------------------------------------------
    def held_out_metrics(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Test-set noise-prediction loss of the EMA network (random t and noise from ``generator``)."""
        return {"test_noise_loss": self.noise_prediction_loss(images, labels, generator)}

    @torch.no_grad()
    def noise_prediction_loss(
        self, images: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The training loss of the EMA network on held-out images (no label dropout).

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1].
            labels: ``(B,)`` int64, used when conditional (None -> the null class).
            generator: source of t and ε; ``self.rng`` when None.

        Returns:
            0-dim mean squared error.
        """
        gen = self.rng if generator is None else generator
        b = images.shape[0]
        t = torch.randint(0, self.config.timesteps, (b,), generator=gen, device=self.device)
        noise = torch.randn(images.shape, generator=gen, device=self.device, dtype=images.dtype)
        x_t = self.schedule.add_noise(images, noise, t)
        with self.autocast():
            pred = self.ema(x_t, t, labels if self.is_conditional else None)
        return F.mse_loss(pred.float(), noise.float())

    # ---- sampling -------------------------------------------------------------------
    def sampling_options(self) -> tuple[SamplingOption, ...]:
        """``sampler``, ``steps`` (DDIM) and, when conditional, ``guidance_scale``; defaults from the config."""
        cfg = self.config
        options = (SamplingOption("sampler", "string", cfg.sampler, choices=tuple(SAMPLERS)),
                   SamplingOption("steps", "long", cfg.sample_steps, low=1, high=cfg.timesteps,
                                  bounds_text=f"between 1 and the model's {cfg.timesteps} timesteps"))
        if self.is_conditional:
            options += (SamplingOption("guidance_scale", "double", float(cfg.guidance_scale), low=0, bounds_text=">= 0"),)
        return options

    def guided_eps(self, x: Tensor, t: int, labels: Tensor | None, guidance_scale: float) -> Tensor:
        """ε from the EMA network at timestep ``t`` for ``x`` ``(B, C, H, W)``, with guidance.

        Convention of Ho & Salimans 2022, eq. 6: ε = (1 + w)·ε(x, c) - w·ε(x, ∅)
        = ε_c + w·(ε_c - ε_u). So w = 0 is the plain conditional model (one pass) and w is
        diffusers' ``guidance_scale - 1``. Conditional and unconditional passes share a batch.
        Labels None on a conditional model -> unconditional samples (the null class).
        """
        b = x.shape[0]
        tt = torch.full((b,), t, device=self.device, dtype=torch.long)
        with self.autocast():
            if not self.is_conditional or labels is None or guidance_scale == 0:
                return self.ema(x, tt, labels if self.is_conditional else None).float()
            null = torch.full_like(labels, self.null_class)
            both = self.ema(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).float()
        eps_cond, eps_uncond = both.chunk(2)
        return eps_cond + guidance_scale * (eps_cond - eps_uncond)

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: Literal["ancestral", "ddim"] | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``n`` images with the EMA network, starting from x_T ~ N(0, I).

        Args:
            n: number of images.
            labels: ``(n,)`` int64 classes (conditional only; None -> unconditional samples).
            generator: noise source; ``self.rng`` when None.
            sampler: ``"ddim"`` (``steps`` evenly spaced steps) or ``"ancestral"`` (always all T
                steps; DDIM with eta = 1 is its strided stochastic cousin). Default: config.
            steps: DDIM steps; default ``config.sample_steps``.
            guidance_scale: w, Ho & Salimans convention (see ``guided_eps``); default config.
            eta: DDIM stochasticity; default ``config.ddim_eta``.
            progress: show a tqdm bar over the steps.

        Returns:
            ``(n, C, H, W)`` uint8 on ``self.device``.
        """
        cfg = self.config
        name = sampler or cfg.sampler
        w = cfg.guidance_scale if guidance_scale is None else guidance_scale
        gen = self.rng if generator is None else generator
        if labels is not None:
            labels = labels.to(self.device)
        chosen = SAMPLERS[name](self.schedule, steps or cfg.sample_steps, cfg.ddim_eta if eta is None else eta)
        pairs = chosen.timesteps()
        if progress:
            from tqdm import tqdm  # only needed for interactive use

            pairs = tqdm(pairs, desc=f"{name} sampling", unit="step")

        x = torch.randn((n, *self.spec.shape), generator=gen, device=self.device)  # x_T
        for t, t_prev in pairs:
            x = chosen.step(self.guided_eps(x, t, labels, w), t, t_prev, x, gen)
        return to_uint8(x)
