"""``python -m pipelines.report``: the leaderboard and the HTML report of every model.

Reads ``metrics/`` (every model's and the classifier's scores), ``models/NAME/`` (history, config,
MLflow run id, loss curve), ``samples/NAME/grid.png`` and ``data/prepared/meta.json``; writes
``reports/index.html`` (self-contained: leaderboard, FID against compute, samples, loss curves)
and ``reports/leaderboard.md``, both at once or neither.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components import layout
from components.config import PipelineConfig
from components.io import atomic_dir
from components.report.html import build_report
from components.report.leaderboard import REPORT_INPUTS, ReportInputError
from pipelines.common import StageParser, parser, run_main


def arguments() -> StageParser:
    """The stage's command line."""
    p = parser(__doc__)
    p.add_argument("--root", default=".", help="project folder holding metrics/, models/, samples/, data/")
    p.path("--out", layout.REPORTS, output=True, help="index.html and leaderboard.md")
    p.reads = list(REPORT_INPUTS)
    return p


def main(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    page, markdown = build_report(cfg, Path(args.root))
    with atomic_dir(args.out) as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / "leaderboard.md").write_text(markdown, encoding="utf-8")
    print(f"report: {len(cfg.train)} models -> {args.out}/index.html ({len(page) / 1e6:.1f} MB), "
          f"{args.out}/leaderboard.md")


if __name__ == "__main__":
    run_main(arguments, main, ReportInputError)
