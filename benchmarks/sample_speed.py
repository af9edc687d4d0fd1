"""``python -m benchmarks.sample_speed``: sampling images/s of every family, and DDPM's speed/quality trade.

Part 1: images/s of each family's ``sample()`` (params.yaml's configs; DDPM with its
configured sampler), untrained weights (speed does not depend on them): one warm-up call,
then the median of ``repeats`` timed calls, device synchronised around each.

Part 2: one small DDPM trained briefly on synthetic data, then sampled with the ancestral
sampler (all T steps) and with DDIM at fewer steps, from the same noise seeds. For each:
images/s (one timed pass over ``fid_samples`` images after a warm-up) and the FID against
held-out real images in the feature space of a small classifier trained here
(``components.models.classifier``), with the FID of real-vs-real at the same size as the floor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    classifier_config,
    common_args,
    emit_json,
    family_configs,
    machine,
    median,
    parse,
    print_table,
    timed,
)
from components.data.loader import TensorLoader
from components.data.spec import DataSpec
from components.data.synthetic import make_synthetic
from components.metrics.features import apply_batched
from components.metrics.fid import fid_numpy
from components.models import build_model
from components.training.loop import configure_runtime, fit

SPEC = DataSpec(channels=1, height=28, width=28, num_classes=10)


def fast_sampling(model: Any, device: torch.device) -> str:
    """The GPU fast path for sampling: bf16 autocast, channels-last conv networks. CPU: fp32 as is."""
    if device.type != "cuda":
        return "fp32"
    conv = model.family in ("dcgan", "ddpm") or getattr(model.config, "architecture", "") == "conv"
    configure_runtime(model, "bf16", channels_last=conv)
    return "bf16" + ("+channels_last" if conv else "")


def draw(model: Any, n: int, seed: int, **kwargs: Any) -> torch.Tensor:
    """``model.sample`` with balanced labels for conditional models and a seeded generator."""
    labels = torch.arange(n, device=model.device) % model.spec.num_classes if model.is_conditional else None
    gen = torch.Generator(device=model.device).manual_seed(seed)
    return model.sample(n, labels=labels, generator=gen, **kwargs)


def family_speed(cfg: Any, device: torch.device, batch: int, repeats: int) -> dict[str, Any]:
    """Median images/s of ``sample(batch)`` for one family."""
    model = build_model(cfg, SPEC, device)
    model.eval()
    settings = fast_sampling(model, device)
    draw(model, batch, seed=0)  # warm-up: kernels, allocator, cuDNN autotuning
    rates = [batch / timed(lambda i=i: draw(model, batch, seed=i + 1), device)[1] for i in range(repeats)]
    sampler = f"{cfg.sampler} {cfg.timesteps if cfg.sampler == 'ancestral' else cfg.sample_steps} steps" \
        if cfg.family == "ddpm" else "one forward pass"
    return {"images_per_s": median(rates), "rates": rates, "sampler": sampler, "settings": settings}


# --------------------------------------------------------------------------- part 2
def train(cfg: Any, images: np.ndarray, labels: np.ndarray, device: torch.device, steps: int | None = None) -> Any:
    """A model trained by the project's loop for ``steps`` batches (default: the config's epochs)."""
    model = build_model(cfg, SPEC, device)
    loader = TensorLoader(images, labels, cfg.batch_size, device, seed=cfg.seed)
    epochs = math.ceil(steps / len(loader)) if steps else cfg.epochs
    fit(model, loader, epochs=epochs, seed=cfg.seed, log_every=max(1, len(loader)))
    return model


def generate(model: Any, n: int, batch: int, device: torch.device, **kwargs: Any) -> tuple[np.ndarray, float]:
    """``n`` uint8 images in batches (chunk ``j`` seeded by ``j``) and the seconds it took."""
    def run() -> list[torch.Tensor]:
        return [draw(model, min(batch, n - s), seed=1000 + j, **kwargs) for j, s in enumerate(range(0, n, batch))]

    chunks, seconds = timed(run, device)
    return torch.cat(chunks).cpu().numpy(), seconds


def ddpm_tradeoff(quick: bool, device: torch.device, batch: int, train_steps: int, n: int,
                  ddim_steps: list[int]) -> dict[str, Any]:
    """Ancestral vs DDIM on one briefly trained DDPM: images/s and FID of each."""
    train_images, train_labels = make_synthetic(512 if quick else 12_000, seed=0)
    real_images, real_labels = make_synthetic(max(n, 256), seed=1)
    classifier = train(classifier_config(quick), train_images, train_labels, device)
    extractor = classifier.feature_extractor().to(device)
    logits = apply_batched(extractor.classify, real_images, 500, device)  # (N, K)
    accuracy = float((logits.argmax(1) == real_labels).mean())
    real = apply_batched(extractor, real_images[:n], 500, device)  # (n, D)
    floor = fid_numpy(real, apply_batched(extractor, train_images[:n], 500, device))

    cfg = family_configs(quick, ["ddpm"])["ddpm"]
    model = train(cfg, train_images, train_labels, device, steps=train_steps)
    model.eval()
    settings = fast_sampling(model, device)
    draw(model, min(batch, n), seed=0, sampler="ddim", steps=2)  # warm-up at the timed batch size
    out: dict[str, Any] = {}
    for sampler, steps in [("ancestral", cfg.timesteps), *[("ddim", s) for s in ddim_steps]]:
        kwargs = {"sampler": sampler} if sampler == "ancestral" else {"sampler": sampler, "steps": steps}
        images, seconds = generate(model, n, batch, device, **kwargs)
        fid = fid_numpy(real, apply_batched(extractor, images, 500, device))
        out[f"{sampler}-{steps}"] = {"sampler": sampler, "steps": steps, "images_per_s": n / seconds,
                                     "seconds": seconds, "fid": fid}
        print(f"ddpm {sampler} {steps} steps: {n / seconds:.3g} img/s, FID {fid:.3g}", flush=True)
    return {"train_steps": model.step, "fid_samples": n, "timesteps": cfg.timesteps, "settings": settings,
            "classifier_accuracy": accuracy, "feature_dim": int(real.shape[1]), "floor_fid": floor, "samplers": out}


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=None, help="images per sample() call (default cpu 256, gpu 500, quick 64)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per family (default 3, quick 1)")
    p.add_argument("--train-steps", type=int, default=None, help="DDPM training steps (default cpu 300, gpu 4000)")
    p.add_argument("--fid-samples", type=int, default=None, help="images per sampler for FID (default cpu 256)")
    p.add_argument("--ddim-steps", default=None, help="comma-separated DDIM step counts (default 50,20)")
    p.add_argument("--no-tradeoff", action="store_true", help="skip part 2 (DDPM ancestral vs DDIM with FID)")
    args, device, threads, families = parse(p)
    gpu = device.type == "cuda"
    batch = args.batch_size or (64 if args.quick else 500 if gpu else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    result: dict[str, Any] = {"benchmark": "sample_speed", **machine(), "device": str(device), "batch_size": batch,
                              "threads": threads, "repeats": repeats, "quick": args.quick, "families": {}}
    for family, cfg in family_configs(args.quick, families).items():
        result["families"][family] = family_speed(cfg, device, batch, repeats)
        print(f"{family}: {result['families'][family]['images_per_s']:.3g} img/s", flush=True)
    if not args.no_tradeoff:
        n = args.fid_samples or (64 if args.quick else 2000 if gpu else 256)
        steps = args.train_steps or (20 if args.quick else 4000 if gpu else 300)
        ddim = [int(s) for s in (args.ddim_steps or ("20,5" if args.quick else "50,20")).split(",")]
        result["ddpm_tradeoff"] = ddpm_tradeoff(args.quick, device, batch, steps, n, ddim)
    report(result)
    emit_json(result, args.json)


def report(result: dict[str, Any]) -> None:
    print(f"\nsample_speed on {result['device']} ({result.get('gpu') or result['cpu']}), batch {result['batch_size']}, "
          f"{result['threads']} thread(s), torch {result['torch']}, load {result['load_avg_1m']}")
    print_table(["family", "sampler", "settings", "images/s"],
                [(f, r["sampler"], r["settings"], r["images_per_s"]) for f, r in result["families"].items()])
    trade = result.get("ddpm_tradeoff")
    if trade:
        print(f"\nDDPM after {trade['train_steps']} training steps (T={trade['timesteps']}), {trade['fid_samples']} "
              f"images per sampler; classifier accuracy {trade['classifier_accuracy']:.3f}, "
              f"real-vs-real FID floor {trade['floor_fid']:.3g}")
        print_table(["sampler", "network evaluations", "images/s", "FID"],
                    [(r["sampler"], r["steps"], r["images_per_s"], r["fid"]) for r in trade["samplers"].values()])


if __name__ == "__main__":
    main()
