"""Stage ``fetch``: get the configured data set into ``data/prepared/`` (Parquet shards + meta.json, docs/data.md).

    python -m pipelines.fetch [--params params.yaml] [--out data/prepared] [--set data.train_subset=1000 ...]

Exit codes: 0 done, 1 the data could not be fetched or failed a check, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from components.config import ConfigError, load_config
from components.data.fetch import FetchError, fetch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments: the params file, the output folder and ``--set`` overrides."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="pipeline params file (default: params.yaml)")
    parser.add_argument("--out", default="data/prepared", type=Path, help="output folder (default: data/prepared)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a param"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the stage; return the process exit code."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.params, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        meta = fetch(cfg.data, args.out, progress=sys.stderr.isatty())
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    c, h, w = meta["shape"]
    skipped = f", {n} unreadable files skipped" if (n := meta["skipped_unreadable"]) else ""
    print(
        f"fetch: {meta['name']} train={meta['counts']['train']} test={meta['counts']['test']} "
        f"({c}x{h}x{w}, {len(meta['class_names'])} classes, {len(meta['prepared_sha256'])} shards{skipped}) "
        f"from {meta['mirror']} "
        f"-> {args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
