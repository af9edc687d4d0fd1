"""The one interface every trainable model offers, whatever its family.

A model is a plain object holding its networks, optimisers and random generator, not an
``nn.Module``: ``state_dict()`` here means the whole *training* state (networks,
optimisers, EMA, step, RNG), which is what exact resume needs.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

from components.data.spec import DataSpec

if TYPE_CHECKING:
    from components.models.sampling import SamplingOption

T = TypeVar("T")


def unwrap(module: nn.Module) -> nn.Module:
    """The bare network under DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):  # DDP
            module = module.module
        elif hasattr(module, "_orig_mod"):  # torch.compile
            module = module._orig_mod
        else:
            return module


def to_uint8(images: Tensor) -> Tensor:
    """Map model output in [-1, 1] to uint8 pixels in [0, 255]. ``(B, C, H, W)`` in and out."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def state_checksum(state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors in sorted key order; 16 hex chars.

    The project's one weights hash: the classifier's identity (``extractor_checksum``) and the
    per-rank digest that checks DDP kept the ranks equal (``checkpoint.parameter_digest``).

    Args:
        state_dict: name -> tensor, e.g. a network's ``state_dict()`` (DDP/compile prefixes
            change the result: pass the unwrapped network's).

    Returns:
        The first 16 hex digits of the digest.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # view as bytes: numpy has no bfloat16, and this works for every dtype.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, worker rank, epoch)."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101 + 17) % (2**63 - 1)


def build_seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` under a private CPU seed: the same ``seed`` gives the same weights on any device
    (build on the CPU, then move), and the caller's global RNG stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float, step: int) -> None:
    """ema <- ema + (1 - d)·(net - ema) for the parameters, on device, no host sync; buffers are copied.

    The decay warms up as d = min(decay, (1 + step) / (10 + step)) (the rule of TensorFlow's
    ExponentialMovingAverage with num_updates): a short CPU run of a few thousand steps would
    otherwise keep a large share of the random initial weights in the average.

    Args:
        ema: the average, same architecture as ``net``, not trained by gradient.
        net: the bare trained network (unwrapped from DDP/compile).
        decay: the decay once warmed up, in [0, 1).
        step: optimiser steps taken so far.
    """
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1.0 - d)
    for ema_buf, buf in zip(ema.buffers(), net.buffers(), strict=True):
        ema_buf.copy_(buf)


class TrainableModel(abc.ABC):
    """Networks + optimisers + one optimisation step.

    Subclasses create their networks as attributes named in ``network_names`` inside
    ``__init__`` and return their optimisers from ``configure_optimizers``, which runs on first
    use of ``self.optimizers`` (a model only loaded to sample never builds any: creating the
    first optimiser imports ``torch._dynamo``, ~2 s per process). Randomness inside ``train_step``
    (noise, timesteps, label dropout) must come from ``self.rng`` so that training is
    reproducible and resumable.

    Args:
        config: the family's validated config section.
        spec: data shape and class count.
        device: where networks, optimisers and the generator live.
    """

    family: ClassVar[str]
    network_names: ClassVar[tuple[str, ...]]
    #: networks that are not trained by gradient (EMA copies); saved, never DDP-wrapped. A family whose
    #: config switches its copy off narrows it per instance (the GANs' ``ema_decay``).
    shadow_names: tuple[str, ...] = ()
    #: fewer optimiser steps per worker than this and a run learns nothing worth sampling: training
    #: warns (``loop.warn_if_short``); None = no such warning
    min_useful_steps: ClassVar[int | None] = None

    def __init__(self, config: Any, spec: DataSpec, device: torch.device | str = "cpu"):
        self.config = config
        self.spec = spec
        self.device = torch.device(device)
        self.step = 0
        # NOTE: the step RNG is ``self.rng`` (not ``self.generator``: GANs have a network of that name).
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(config.seed)
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None
        self._pending_optimizer_state: dict[str, Any] = {}  # loaded before the optimisers exist
        self.autocast_dtype: torch.dtype | None = None

    @abc.abstractmethod
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name (usually ``make_adam`` per network); called once, on first use."""

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            self._optimizers = self.configure_optimizers()
            for name, state in self._pending_optimizer_state.items():
                self._optimizers[name].load_state_dict(state)
            self._pending_optimizer_state = {}
        return self._optimizers

    # ---- the step -------------------------------------------------------------------
    @abc.abstractmethod
    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One optimisation step of every network.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1], on ``self.device``.
            labels: ``(B,)`` int64 class labels.

        Returns:
            Named losses as detached 0-dim tensors (no host sync; call ``float()`` when logging).
        """

    # ---- shared plumbing ------------------------------------------------------------
    def net(self, name: str) -> nn.Module:
        """The bare network ``name``: use it for sampling, so no DDP collective runs on one rank alone."""
        return unwrap(getattr(self, name))

    def networks(self) -> dict[str, nn.Module]:
        """Bare (unwrapped) networks by name, shadows included."""
        return {n: unwrap(getattr(self, n)) for n in (*self.network_names, *self.shadow_names)}

    def num_parameters(self) -> int:
        return sum(p.numel() for n in self.network_names for p in unwrap(getattr(self, n)).parameters())

    def wrap_networks(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Replace each trained network by ``wrap(network)`` (DDP, torch.compile)."""
        for name in self.network_names:
            setattr(self, name, wrap(getattr(self, name)))

    def train(self, mode: bool = True) -> TrainableModel:
        for name in self.network_names:
            getattr(self, name).train(mode)
        return self

    def eval(self) -> TrainableModel:
        return self.train(False)

    def reseed(self, seed: int, rank: int, epoch: int) -> None:
        """Re-seed the step generator; called at every epoch start so resume is exact."""
        self.rng.manual_seed(rank_seed(seed, rank, epoch))

    @property
    def precision(self) -> Literal["fp32", "bf16"]:
        """The precision the forward passes run in (set by ``configure_runtime``)."""
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> Any:
        """Autocast context for forward passes (a no-op unless bf16 was enabled)."""
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def clip(self, network: nn.Module) -> None:
        """Clip gradient norm when the config asks for it."""
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(network.parameters(), self.config.grad_clip)

    def make_adam(self, *networks: nn.Module) -> torch.optim.Optimizer:
        """Adam with the config's lr/adam_betas; fused on CUDA (one kernel per step)."""
        params = [p for net in networks for p in net.parameters()]
        cfg = self.config
        fused = self.device.type == "cuda"
        if cfg.weight_decay:
            return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, fused=fused)
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=fused)

    def extra_state(self) -> dict[str, Any]:
        """Family-specific state to checkpoint besides networks and optimisers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def state_dict(self) -> dict[str, Any]:
        """Whole training state; tensors and plain data only (``weights_only`` loadable)."""
        return {
            "networks": {n: m.state_dict() for n, m in self.networks().items()},
            # not built yet: the state loaded for them (if any) passes through unchanged
            "optimizers": ({n: o.state_dict() for n, o in self._optimizers.items()} if self._optimizers is not None
                           else dict(self._pending_optimizer_state)),
            "step": self.step,
            "rng": self.rng.get_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.networks().items():
            module.load_state_dict(state["networks"][name])
        if self._optimizers is None:
            self._pending_optimizer_state = dict(state["optimizers"])
        else:
            for name, opt_state in state["optimizers"].items():
                self._optimizers[name].load_state_dict(opt_state)
        self.step = int(state["step"])
        self.rng.set_state(state["rng"].cpu())
        self.load_extra_state(state.get("extra", {}))


class GenerativeModel(TrainableModel):
    """A trainable model that can also draw new images."""

    kind: ClassVar[Literal["gan", "vae", "diffusion"]]
    conditional: ClassVar[bool] = False
    #: ``sample(labels=None)`` draws from the unconditional distribution (unconditional families,
    #: DDPM's null class); False where a conditional family has no such class (CGAN), so a request
    #: without labels gets balanced ones (``components.models.sampling.balanced_labels``)
    samples_unlabelled: ClassVar[bool] = True
    #: ``sample`` takes ``progress=True`` and shows its own bar (over DDPM's denoising steps)
    sample_progress: ClassVar[bool] = False
    #: sampling runs the network many times an image (DDPM's denoising steps): the sample stage
    #: spreads it over ``ray.num_workers``; a single-pass generator samples on one worker
    #: (``SampleConfig.num_workers``)
    iterative_sampler: ClassVar[bool] = False

    @property
    def is_conditional(self) -> bool:
        """Whether ``sample`` honours labels (DDPM decides per config)."""
        return self.conditional

    def held_out_metrics(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Family-specific scores on real held-out images (the VAE's ELBO, DDPM's noise loss); none by default.

        Args:
            images: ``(B, C, H, W)`` float in [-1, 1]; labels: ``(B,)``; generator: for any noise.

        Returns:
            Named per-batch means (0-dim tensors), e.g. ``{"test_elbo": ...}``.
        """
        del images, labels, generator
        return {}

    def sampling_options(self) -> tuple[SamplingOption, ...]:
        """The options ``sample`` takes beyond ``(n, labels, generator)``, defaults from the config; none by
        default. Serving offers exactly these (``components.serving``), so it never asks the family."""
        return ()

    @abc.abstractmethod
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images.

        Args:
            n: number of images.
            labels: ``(n,)`` int64 requested classes (conditional families; ignored otherwise).
            generator: source of randomness; ``self.rng`` is used (and advanced) when None.

        Returns:
            ``(n, C, H, W)`` uint8 images on ``self.device``.
        """
