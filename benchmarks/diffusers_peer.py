"""The diffusers side of ``benchmarks.peers``: runs in the peer's own virtual environment.

Imports only torch, numpy and diffusers (never the project's ``components``), so the numbers
are diffusers' own. Training follows diffusers' ``examples/unconditional_image_generation/
train_unconditional.py``: ``UNet2DModel``, ``DDPMScheduler.add_noise`` at uniformly drawn
timesteps, MSE on the noise, gradient clipping, ``EMAModel``; sampling is ``DDIMPipeline``
with ``DDIMScheduler`` built from the training scheduler's config.

Protocol (so the driver can interleave the two sides): arguments fix the model and data;
then one JSON object per line on stdin, one JSON answer per line on stdout:

- ``{"cmd": "train", "seconds": S}`` trains until S seconds have passed (at least one step) ->
  ``{"steps", "images", "seconds", "cpu_seconds", "loss"}``;
- ``{"cmd": "train", "steps": K}`` trains K steps -> the same;
- ``{"cmd": "sample", "n": N, "batch": B, "steps": S, "seed": s, "out": PATH}`` draws N images
  with the EMA weights, batch ``j`` from ``torch.Generator().manual_seed(s + j)``, writes uint8
  ``(N, 1, H, W)`` to the ``.npy`` PATH (atomically) -> ``{"images", "seconds"}``;
- ``{"cmd": "quit"}``.

The first line written is ``{"ready": true, "parameters": P, "diffusers": VERSION, ...}``; a
bad command gets ``{"error": "..."}`` and the loop goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help=".npy of uint8 training images (N, 1, H, W)")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--betas", type=float, nargs=2, required=True)
    p.add_argument("--grad-clip", type=float, default=None, help="max grad norm (default: no clipping)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2", help="diffusers' name (cosine: squaredcos_cap_v2)")
    p.add_argument("--block-out-channels", type=int, nargs="+", required=True)
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--norm-num-groups", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


class Peer:
    """diffusers' UNet2DModel trained as train_unconditional.py does, sampled with DDIMPipeline."""

    def __init__(self, args: argparse.Namespace):
        import numpy as np
        import torch
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel

        self.torch, self.np, self.args = torch, np, args
        torch.manual_seed(args.seed)
        torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        data = np.load(args.data)
        if data.dtype != np.uint8 or data.ndim != 4:
            raise SystemExit(f"error: --data must hold uint8 (N, C, H, W) images, got {data.dtype} {data.shape}")
        self.images = torch.from_numpy(data).to(self.device)
        size, channels = data.shape[-1], data.shape[1]
        levels = len(args.block_out_channels)
        self.model = UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels,
            block_out_channels=tuple(args.block_out_channels), layers_per_block=args.layers_per_block,
            norm_num_groups=args.norm_num_groups, attention_head_dim=8,
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        ).to(self.device)
        self.scheduler = DDPMScheduler(num_train_timesteps=args.timesteps, beta_schedule=args.beta_schedule)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr, betas=tuple(args.betas))
        # train_unconditional.py: EMAModel(..., use_ema_warmup=...); without warmup the decay is
        # min(decay, (1 + step) / (10 + step)), the project's own rule.
        self.ema = EMAModel(self.model.parameters(), decay=args.ema_decay, model_cls=UNet2DModel,
                            model_config=self.model.config)
        self.generator = torch.Generator(device="cpu").manual_seed(args.seed)
        self.order, self.cursor = torch.randperm(len(self.images), generator=self.generator), 0

    def batch(self) -> Any:
        b = self.args.batch_size
        if self.cursor + b > len(self.order):  # a new epoch: reshuffle, drop the last partial batch
            self.order, self.cursor = self.torch.randperm(len(self.images), generator=self.generator), 0
        idx = self.order[self.cursor:self.cursor + b].to(self.device)
        self.cursor += b
        return self.images.index_select(0, idx).float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]

    def train_step(self) -> float:
        """One step of train_unconditional.py's loop (fp32, no accelerate, constant lr)."""
        torch, F = self.torch, self.torch.nn.functional
        clean_images = self.batch()
        noise = torch.randn(clean_images.shape, device=self.device)
        bsz = clean_images.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (bsz,), device=self.device).long()
        noisy_images = self.scheduler.add_noise(clean_images, noise, timesteps)
        model_output = self.model(noisy_images, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        if self.args.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.ema.step(self.model.parameters())
        return loss.item()

    def train(self, seconds: float | None, steps: int | None) -> dict[str, Any]:
        self.model.train()
        start, cpu_start, done, losses = time.perf_counter(), time.process_time(), 0, []
        while True:
            losses.append(self.train_step())
            done += 1
            if (steps is not None and done >= steps) or (seconds is not None and time.perf_counter() - start >= seconds):
                break
        elapsed = time.perf_counter() - start
        return {"steps": done, "images": done * self.args.batch_size, "seconds": elapsed,
                "cpu_seconds": time.process_time() - cpu_start, "loss": sum(losses) / len(losses)}

    def sample(self, n: int, batch: int, steps: int, seed: int, out: str) -> dict[str, Any]:
        from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

        torch, np = self.torch, self.np
        unet = UNet2DModel.from_config(self.model.config).to(self.device)
        self.ema.copy_to(unet.parameters())
        unet.eval()
        pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(self.scheduler.config))
        pipeline.set_progress_bar_config(disable=True)
        chunks, start = [], time.perf_counter()
        for j, first in enumerate(range(0, n, batch)):
            gen = torch.Generator(device="cpu").manual_seed(seed + j)
            images = pipeline(batch_size=min(batch, n - first), generator=gen, num_inference_steps=steps, eta=0.0,
                              output_type="np").images  # (B, H, W, C) float in [0, 1]
            chunks.append(images)
        seconds = time.perf_counter() - start
        pixels = (np.concatenate(chunks) * 255).round().clip(0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
        tmp = f"{out}.tmp.npy"
        np.save(tmp, pixels)
        os.replace(tmp, out)
        return {"images": len(pixels), "seconds": seconds}


def serve(peer: Peer) -> None:
    """Answer the driver's commands, one JSON line each, until ``quit`` or end of input."""
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                return
            if cmd.get("cmd") == "train":
                answer = peer.train(cmd.get("seconds"), cmd.get("steps"))
            elif cmd.get("cmd") == "sample":
                answer = peer.sample(int(cmd["n"]), int(cmd["batch"]), int(cmd["steps"]), int(cmd["seed"]),
                                     str(cmd["out"]))
            else:
                answer = {"error": f"unknown command {cmd.get('cmd')!r}; expected train, sample or quit"}
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


def main() -> None:
    args = arguments().parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"error: --data {args.data} does not exist")
    try:
        import diffusers
    except ImportError:
        raise SystemExit("error: diffusers is not installed in this Python: run it from the peer venv "
                         "(python -m benchmarks.peers makes one)") from None
    peer = Peer(args)
    print(json.dumps({"ready": True, "diffusers": diffusers.__version__, "torch": peer.torch.__version__,
                      "parameters": sum(p.numel() for p in peer.model.parameters()),
                      "threads": peer.torch.get_num_threads()}), flush=True)
    serve(peer)


if __name__ == "__main__":
    main()
