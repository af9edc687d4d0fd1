"""The few lines ``make run`` ends with: what ran and how long it took, the leaderboard's top,
where the report is and how to browse the runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components import layout
from components.report.leaderboard import ReportInputError, collect_rows, fmt, load_inputs

TOP_ROWS = 5


def stage_times(path: str | Path, since: float) -> list[dict[str, Any]]:
    """The stage records of ``logs/stages.jsonl`` that started at or after ``since`` (epoch seconds)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a record cut short by a killed stage
        if record.get("started", 0) >= since:
            records.append(record)
    return records


def format_times(records: list[dict[str, Any]], wall_seconds: float | None) -> list[str]:
    """One line per stage that ran (in order), then the total."""
    if not records:
        return ["stages: none ran (everything was up to date)"]
    width = max(len(r["stage"]) for r in records)
    lines = [f"  {r['stage']:<{width}}  {r['seconds']:7.1f} s{'' if r['ok'] else '  FAILED'}" for r in records]
    total = sum(r["seconds"] for r in records)
    wall = f", {wall_seconds:.0f} s wall clock" if wall_seconds is not None else ""
    return [f"stages ({len(records)} ran, {total:.0f} s in stages{wall}):", *lines]


def format_leaderboard(root: Path, names: list[str], top: int = TOP_ROWS) -> list[str]:
    """The best ``top`` models by FID, with precision, recall and (conditional models) accuracy."""
    try:
        rows = [r for r in collect_rows(load_inputs(names, root)) if r.kind == "model"]
    except (ReportInputError, KeyError, ValueError) as exc:
        return [f"leaderboard: not available ({str(exc).splitlines()[0]})"]
    width = max(len(r.label) for r in rows)
    lines = [f"leaderboard (FID, lower is better; N = {rows[0].num_samples}):"]
    for row in rows[:top]:
        acc = row.values.get("cond_acc")
        extra = f"  cond. acc {fmt(acc, 'frac')}" if acc is not None else ""
        lines.append(f"  {row.rank}. {row.label:<{width}}  FID {fmt(row.fid, 'fid')}  precision "
                     f"{fmt(row.values.get('precision'), 'frac')}  recall {fmt(row.values.get('recall'), 'frac')}{extra}")
    return lines


def summary(root: Path, names: list[str], since: float, wall_seconds: float | None, tracking_uri: str) -> str:
    """The whole summary as text."""
    report = (root / layout.REPORTS / "index.html").resolve()
    lines = ["", "── summary " + "─" * 60,
             *format_times(stage_times(root / layout.LOGS / layout.STAGE_TIMES, since), wall_seconds),
             *format_leaderboard(root, names),
             f"report: {report.as_uri() if report.exists() else '(not written)'}",
             f"runs:   mlflow ui --backend-store-uri {tracking_uri}" if not tracking_uri.startswith("http")
             else f"runs:   {tracking_uri}",
             f"logs:   {(root / layout.LOGS).resolve()}/ (Ray's output of every job; -v on a stage prints it)"]
    return "\n".join(lines)

