"""``python -m pipelines.summary --since EPOCH``: the lines ``make run`` ends with.

The stages that ran since ``EPOCH`` and their times (``logs/stages.jsonl``), the leaderboard's top
rows, where the report is and how to browse the MLflow runs. Not a DVC stage: it writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from components import tracking
from components.report.summary import summary
from pipelines.common import load_or_exit, parser


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--since", type=float, default=0.0, help="epoch seconds: stages that started before are left out")
    p.add_argument("--wall", type=float, default=None, help="the run's wall-clock seconds, if known")
    args = p.parse_args()
    cfg = load_or_exit(args)
    print(summary(Path("."), list(cfg.train), args.since, args.wall, tracking.resolve_tracking_uri(cfg.mlflow)))


if __name__ == "__main__":
    main()
