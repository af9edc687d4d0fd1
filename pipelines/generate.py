"""``python -m pipelines.generate``: images from a trained model, local or from the Model Registry.

    python -m pipelines.generate --model ddpm -n 64 --out grid.png
    python -m pipelines.generate --uri models:/genmodels-cgan@champion -n 16 --label Sneaker --out shoes.npz

A bad label, an unknown model or an unreachable registry is a one-line ``error:`` (exit 2).
Not a pipeline stage: it writes only ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from components import layout
from components.serving.generate import GenerateError, local_generator, registered_generator, write_images
from components.serving.generator import GenerationError
from pipelines.common import EXIT_CONFIG


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a trained model of this project: models/NAME/checkpoint.pt")
    source.add_argument("--uri", help="an MLflow model URI, e.g. models:/genmodels-ddpm@champion")
    p.add_argument("-n", "--num-images", type=int, default=16)
    p.add_argument("--label", default=None, help="class index or name (conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="diffusion: DDIM steps (default: the model's)")
    p.add_argument("--sampler", choices=("ddim", "ancestral"), default=None, help="diffusion sampler")
    p.add_argument("--guidance-scale", type=float, default=None, help="conditional diffusion: w")
    p.add_argument("--out", type=Path, required=True, help="grid.png (a grid) or images.npz (uint8 arrays)")
    p.add_argument("--models-dir", default=layout.MODELS)
    p.add_argument("--data", default=layout.DATA, help="for class names of a local model")
    p.add_argument("--params", default="params.yaml", help="for mlflow.tracking_uri (MLFLOW_TRACKING_URI wins)")
    return p.parse_args(argv)


def tracking_uri(params: str) -> str:
    """As the stages resolve it: MLFLOW_TRACKING_URI > params' mlflow.tracking_uri > ./mlflow.db."""
    from components.config import ConfigError, MlflowConfig, load_config
    from components.tracking import resolve_tracking_uri

    try:
        cfg = load_config(params).mlflow if Path(params).exists() else MlflowConfig()
    except ConfigError as exc:
        raise GenerateError(f"{params}: {exc}") from None
    return resolve_tracking_uri(cfg)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.out.suffix not in (".png", ".npz"):
            raise GenerateError(f"--out must end in .png (a grid) or .npz (arrays), got {args.out}")
        gen = (local_generator(args.models_dir, args.model, args.data) if args.model
               else registered_generator(args.uri, tracking_uri(args.params)))
        start = time.perf_counter()
        out = gen.generate([(args.num_images, args.label)], seed=args.seed, sampler=args.sampler,
                           steps=args.steps, guidance_scale=args.guidance_scale, progress=True)
        seconds = time.perf_counter() - start
        write_images(out, args.out)
    except (GenerateError, GenerationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    print(f"generate: {len(out.images)} images in {seconds:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
