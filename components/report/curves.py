"""Loss curves from a training history (a list of ``{"step": ..., <loss>: ...}`` dicts)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

EPOCH_KEYS = {"epoch", "epoch_seconds", "images_per_s"}


def loss_rows(history: list[dict]) -> list[dict]:
    """The per-log-step loss rows (epoch summary rows dropped)."""
    return [row for row in history if not EPOCH_KEYS & row.keys()]


def history_to_csv(history: list[dict]) -> str:
    """CSV with a ``step`` column and one column per loss, for ``dvc plots``."""
    rows = loss_rows(history)
    keys = ["step"] + sorted({k for row in rows for k in row} - {"step"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    return buf.getvalue()


def plot_losses(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Save a PNG of every loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = loss_rows(history)
    keys = sorted({k for row in rows for k in row} - {"step"})
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)
