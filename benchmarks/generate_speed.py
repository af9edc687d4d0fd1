"""``python -m benchmarks.generate_speed``: images/s through the generator pyfunc against the
sample stage's way of sampling (``model.sample`` on batches), per family.

For each family (params.yaml's config, untrained weights: speed does not depend on them) the
same model is timed three ways, median of ``repeats`` calls of ``batch`` images after a warm-up:
``sample()`` (what the sample stage's workers call), the ``Generator`` (the pyfunc's core:
seeded generator, label resolution, batching) and ``pyfunc.predict`` of the logged model loaded
back with ``mlflow.pyfunc.load_model`` (adds the DataFrame and one PNG + base64 per image).
Needs MLflow (a private sqlite store in a temp folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    common_args,
    emit_json,
    family_configs,
    machine,
    median,
    parse,
    print_table,
    timed,
)
from benchmarks.sample_speed import SPEC, draw


def family_speeds(cfg: Any, folder: Path, batch: int, repeats: int) -> dict[str, Any]:
    """images/s of sample(), Generator.generate and pyfunc.predict for one family (CPU)."""
    import mlflow.pyfunc
    import pandas as pd

    from components.models import build_model
    from components.serving.generator import Generator
    from components.serving.pyfunc import log_generator
    from components.tracking import client
    from components.training.checkpoint import checkpoint_payload, save_checkpoint

    device = torch.device("cpu")
    model = build_model(cfg, SPEC, device).eval()
    checkpoint = save_checkpoint(folder / cfg.family / "checkpoint.pt", checkpoint_payload(model, name=cfg.family, epoch=0))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    c = client(uri)
    found = c.get_experiment_by_name("generate-speed")
    exp = found.experiment_id if found else c.create_experiment("generate-speed", (folder / "artifacts").as_uri())
    model_uri = log_generator(uri, c.create_run(exp).info.run_id, checkpoint, [str(i) for i in range(10)])
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    generator = Generator(model)
    frame = pd.DataFrame({"num_images": [batch], **({"label": [3]} if model.is_conditional else {})})
    label = 3 if model.is_conditional else None
    ways = {
        "sample": lambda i: draw(model, batch, seed=i),
        "generator": lambda i: generator.generate([(batch, label)], seed=i),
        "pyfunc": lambda i: pyfunc.predict(frame, params={"seed": i}),
    }
    out: dict[str, Any] = {}
    for way, fn in ways.items():
        fn(0)  # warm-up
        rates = [batch / timed(lambda i=i, fn=fn: fn(i + 1), device)[1] for i in range(repeats)]
        out[way] = {"images_per_s": median(rates), "rates": rates}
    out["pyfunc_vs_sample"] = out["pyfunc"]["images_per_s"] / out["sample"]["images_per_s"]
    return out


def main() -> None:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=None, help="images per call (default 256; ddpm 64; quick 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per way (default 3, quick 1)")
    args, _, threads, families = parse(p, cpu_only=True)
    repeats = args.repeats or (1 if args.quick else 3)
    result: dict[str, Any] = {"benchmark": "generate_speed", **machine(), "device": "cpu", "threads": threads,
                              "repeats": repeats, "quick": args.quick, "families": {}}
    with tempfile.TemporaryDirectory(prefix="generate-speed-") as tmp:
        for family, cfg in family_configs(args.quick, families).items():
            batch = args.batch_size or (16 if args.quick else 64 if family == "ddpm" else 256)
            result["families"][family] = {"batch": batch, **family_speeds(cfg, Path(tmp), batch, repeats)}
            r = result["families"][family]
            print(f"{family}: sample {r['sample']['images_per_s']:.3g}, pyfunc {r['pyfunc']['images_per_s']:.3g} img/s",
                  flush=True)
    print(f"\ngenerate_speed on cpu ({result['cpu']}), {threads} thread(s), torch {result['torch']}, "
          f"load {result['load_avg_1m']}")
    print_table(["family", "batch", "sample() img/s", "Generator img/s", "pyfunc img/s", "pyfunc / sample"],
                [(f, r["batch"], r["sample"]["images_per_s"], r["generator"]["images_per_s"],
                  r["pyfunc"]["images_per_s"], r["pyfunc_vs_sample"]) for f, r in result["families"].items()])
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
