"""Train one family in-process for a fixed number of steps and score it as the evaluate stage does.

    python -m benchmarks.recipe --family cgan --steps 3510 --batch 128 --seeds 0,1,2
    python -m benchmarks.recipe --family dcgan --steps 1872 --batch 64 --set lr=0.001
    python -m benchmarks.recipe --family ddpm --steps 312 --runtime bf16+cl --seeds 0,1,2 --samples 2000

Trains on the prepared training split (``python -m pipelines.fetch``) in one process, one
thread, no Ray, then draws ``--samples`` images (labels ``i % K``, as the sample stage asks
conditional models) and scores them against the classifier stage's real test features
(``python -m pipelines.classifier --plain``) with the project's own metric set
(``components.metrics.suite.sample_metrics``: FID, precision/recall, ...) and, for conditional
families, ``conditional_accuracy``. Issue 30 (item 4) used it to choose every family's default
recipe (docs/benchmarks.md, "The default's recipes").

To match a default run, give params.yaml's per-worker step count and twice its per-worker batch:
one process at batch 128 sees the same images per step as the 2 workers at batch 64 together
(gan/cgan: 15 epochs of 30,000 images over 2 workers at batch 64 = 3,510 steps).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT, emit_json, family_configs, machine, print_table, with_settings
from components.config import FAMILIES


def train(model: Any, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int, seed: int,
          channels_last: bool = False) -> float:
    """Train ``model`` for ``steps`` optimiser steps with ``components.training.loop.fit``; returns seconds."""
    from components.data.loader import TensorLoader
    from components.training.loop import fit

    loader = TensorLoader(images, labels, batch_size, model.device, shuffle=True, seed=seed)
    epochs = -(-steps // len(loader))
    start = time.perf_counter()
    fit(model, loader, epochs=epochs, seed=seed, max_steps=steps, log_every=max(steps, 1), channels_last=channels_last)
    return time.perf_counter() - start


def score(model: Any, classifier: Any, real_features: np.ndarray, num_samples: int, seed: int,
          evaluate_cfg: Any) -> dict[str, float]:
    """The evaluate stage's scores of ``num_samples`` samples (and ``cond_acc`` for conditional models)."""
    from components.metrics.conditional import conditional_accuracy
    from components.metrics.suite import sample_metrics

    model.eval()
    labels = torch.arange(num_samples) % model.spec.num_classes
    gen = torch.Generator().manual_seed(seed)
    feats, predicted = [], []
    with torch.no_grad():
        for start in range(0, num_samples, 500):
            chunk = labels[start : start + 500]
            images = model.sample(len(chunk), labels=chunk if model.is_conditional else None, generator=gen)
            f, p = classifier.embed_and_predict(images.float().div(127.5).sub(1.0))  # as the features job
            feats.append(f.double().numpy())
            predicted.append(p.numpy())
    out = sample_metrics(real_features, np.concatenate(feats), evaluate_cfg)
    if model.is_conditional:
        out["cond_acc"] = conditional_accuracy(np.concatenate(predicted), labels.numpy())
    return out


def run(family: str, steps: int, batch_size: int, seed: int, precision: str, data: Path, classifier_dir: Path,
        num_samples: int, settings: dict[str, Any], build: Any = None) -> dict[str, Any]:
    """One training run and its scores; ``build(config, spec)`` makes the model (default: the registry's)."""
    from components import layout
    from components.config import EvaluateConfig, read_raw_params
    from components.data.dataset import load_meta, load_split, spec_from_meta
    from components.models import build_model
    from components.training.checkpoint import CHECKPOINT_FILE, model_from_checkpoint
    from components.training.loop import configure_runtime

    cfg = with_settings(family_configs(False, [family])[family], batch_size=batch_size, seed=seed,
                        precision=precision, **settings)
    spec = spec_from_meta(load_meta(data))
    train_split = load_split(data, "train")
    model = (build or build_model)(cfg, spec)
    configure_runtime(model, cfg.precision, cfg.channels_last, cfg.compile)
    seconds = train(model, train_split.images, train_split.labels, steps, batch_size, seed, cfg.channels_last)

    ecfg = EvaluateConfig.model_validate(read_raw_params(ROOT / "params.yaml", []).get("evaluate", {}))
    classifier = model_from_checkpoint(classifier_dir / CHECKPOINT_FILE)
    real = np.load(classifier_dir / layout.REFERENCE_FILE)["test_features"][:num_samples]
    scores = score(model, classifier, real, num_samples, ecfg.seed, ecfg)
    runtime = model.precision + ("+cl" if cfg.channels_last else "") + ("+compile" if cfg.compile != "off" else "")
    return {"family": family, "steps": model.step, "batch": batch_size, "seed": seed, "dtype": runtime,
            "settings": settings, "seconds": round(seconds, 1), **scores}


def main() -> None:
    from components import layout

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=FAMILIES, default="gan")
    p.add_argument("--steps", type=int, default=3510)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds, one run each")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--runtime", default=None, metavar="CANDIDATE",
                   help="runtime settings as train_speed's candidates, e.g. bf16+cl or fp32+compile "
                        "(overrides --precision; issue 30's FID-at-equal-steps table)")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the family's params.yaml section (value parsed as YAML)")
    p.add_argument("--data", type=Path, default=ROOT / layout.DATA)
    p.add_argument("--classifier", type=Path, default=ROOT / layout.CLASSIFIER_DIR)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args()

    import yaml

    torch.set_num_threads(args.threads)
    settings = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    precision = args.precision
    if args.runtime:
        from benchmarks.train_speed import parse_candidate

        runtime = parse_candidate(args.runtime)
        precision = runtime.pop("precision")
        settings.update(runtime)
    rows = [run(args.family, args.steps, args.batch, int(seed), precision, args.data, args.classifier,
                args.samples, settings) for seed in args.seeds.split(",")]
    keys = ("family", "seed", "steps", "batch", "dtype", "fid", "precision", "recall", "cond_acc", "seconds")
    print_table(["family", "seed", "steps", "batch", "dtype", "FID", "precision", "recall", "cond. acc", "s"],
                [[r.get(k) for k in keys] for r in rows])
    emit_json({"machine": machine(), "runs": rows}, args.json)


if __name__ == "__main__":
    main()
