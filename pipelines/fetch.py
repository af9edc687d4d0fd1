"""Stage ``fetch``: get the configured data set into ``data/prepared/`` (Parquet shards + meta.json, docs/data.md).

    python -m pipelines.fetch [--params params.yaml] [--out data/prepared] [--set data.train_subset=1000 ...]

Exit codes: 0 done, 1 the data could not be fetched or failed a check, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
import time

from components import layout
from components.config import PipelineConfig
from components.data.fetch import FetchError, fetch
from pipelines.common import StageParser, parser, run_main


def arguments() -> StageParser:
    """The stage's command line."""
    p = parser(__doc__.splitlines()[0])
    p.path("--out", layout.DATA, output=True, help="output folder")
    return p


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    start = time.perf_counter()
    meta = fetch(cfg.data, args.out, progress=sys.stderr.isatty())
    c, h, w = meta["shape"]
    skipped = f", {n} unreadable files skipped" if (n := meta["skipped_unreadable"]) else ""
    print(
        f"fetch: {meta['name']} train={meta['counts']['train']} test={meta['counts']['test']} "
        f"({c}x{h}x{w}, {len(meta['class_names'])} classes, {len(meta['prepared_sha256'])} shards{skipped}) "
        f"from {meta['mirror']} "
        f"-> {args.out} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    run_main(arguments, main, FetchError)
