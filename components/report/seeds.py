"""Seeds as an axis of the comparison: models trained alike but for their seed, read as one.

A model's bootstrap ``±`` says how much its FID moves with the samples drawn from one trained
model; it says nothing of how much training itself varies. Train the same config under several
seeds (sections of params.yaml equal but for ``seed``: ``gan_seed1: {<<: *gan, seed: 1}``) and
this table gives, per such group, the mean and the standard deviation across seeds beside the
mean bootstrap spread, ranks the groups by the mean, and marks neighbours the seeds cannot tell
apart.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from components.report.leaderboard import DASH, TIE_SIGMAS, ReportInputs, Row, fmt

#: scores averaged across seeds besides FID (when the models have them)
SEED_KEYS = ("precision", "recall", "cond_acc")


@dataclass
class SeedGroup:
    """Models whose configs differ only in ``seed``, in params order; named after the first."""

    label: str
    family: str
    models: list[str]
    seeds: list[int]
    fids: list[float]
    boot_stds: list[float]  # each model's bootstrap std of FID
    values: dict[str, list[float]]  # SEED_KEYS -> one value per seed
    rank: int | None = None
    tied_with: str | None = None  # the group ranked just above, when the seeds cannot tell the two apart

    @property
    def fid_mean(self) -> float:
        return statistics.fmean(self.fids)

    @property
    def fid_seed_std(self) -> float | None:
        """Sample standard deviation of FID across seeds (None with one seed: unknown, not zero)."""
        return statistics.stdev(self.fids) if len(self.fids) > 1 else None

    @property
    def boot_std(self) -> float | None:
        return statistics.fmean(self.boot_stds) if self.boot_stds else None


def _without_seed(config: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k != "seed"))


def seed_groups(inputs: ReportInputs, rows: list[Row]) -> list[SeedGroup]:
    """Group the models by their config without ``seed``, ranked by mean FID (best first).

    Args:
        inputs: the report's inputs (each model's ``config.json``).
        rows: ``collect_rows(inputs)`` (FID, its bootstrap std and the other scores of each model).

    Returns:
        One group per distinct config, ranks and ties filled in.
    """
    by_model = {r.model: r for r in rows if r.kind == "model"}
    groups: dict[tuple, SeedGroup] = {}
    for name, m in inputs.models.items():
        config, row = m.config.get("config", {}), by_model[name]
        group = groups.setdefault(_without_seed(config), SeedGroup(
            label=name, family=row.family, models=[], seeds=[], fids=[], boot_stds=[], values={k: [] for k in SEED_KEYS}))
        group.models.append(name)
        group.seeds.append(int(config.get("seed", 0)))
        group.fids.append(row.fid)
        if row.fid_std is not None:
            group.boot_stds.append(float(row.fid_std))
        for key in SEED_KEYS:
            if row.values.get(key) is not None:
                group.values[key].append(float(row.values[key]))
    ranked = sorted(groups.values(), key=lambda g: g.fid_mean)
    for i, group in enumerate(ranked):
        group.rank = i + 1
        if i and seeds_cannot_tell_apart(group, ranked[i - 1]):
            group.tied_with = ranked[i - 1].label
    return ranked


def seeds_cannot_tell_apart(a: SeedGroup, b: SeedGroup) -> bool:
    """Whether the mean FIDs differ by less than TIE_SIGMAS standard errors of their difference
    (Welch's; a group of one seed borrows the other's spread). False when neither has two seeds."""
    sa, sb = a.fid_seed_std, b.fid_seed_std
    if sa is None and sb is None:
        return False
    sa, sb = (sb if sa is None else sa), (sa if sb is None else sb)
    return abs(a.fid_mean - b.fid_mean) < TIE_SIGMAS * math.sqrt(sa**2 / len(a.fids) + sb**2 / len(b.fids))


def has_seeds(groups: list[SeedGroup]) -> bool:
    """Whether any model was trained under more than one seed (only then is the table worth a look)."""
    return any(len(g.fids) > 1 for g in groups)


def _mean_std(values: list[float], style: str = "frac") -> str:
    if not values:
        return DASH
    mean = fmt(statistics.fmean(values), style)
    return f"{mean} ± {fmt(statistics.stdev(values), style)}" if len(values) > 1 else mean


HEADERS = ("#", "model", "family", "seeds", "FID mean ± std (seeds)", "bootstrap ±", "precision", "recall",
           "cond. acc")


def seed_cells(g: SeedGroup) -> list[str]:
    """The cells of one group's line, in ``HEADERS`` order."""
    rank = f"{g.rank} ≈ {g.tied_with}" if g.tied_with else str(g.rank)
    fid = fmt(g.fid_mean, "fid") + (f" ± {fmt(g.fid_seed_std, 'fid')}" if g.fid_seed_std is not None else " (1 seed)")
    return [rank, g.label, g.family, ", ".join(map(str, g.seeds)), fid, fmt(g.boot_std, "fid"),
            *(_mean_std(g.values[k]) for k in SEED_KEYS)]


def seeds_table(groups: list[SeedGroup]) -> str:
    """The groups as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(seed_cells(g)) + " |" for g in groups]
    return "\n".join(lines) + "\n"


SEEDS_NOTE = (
    "Models trained alike but for their seed, read as one: FID's mean ± standard deviation across the "
    "seeds (training's own variance) beside the mean bootstrap ± (the samples' noise for one trained "
    f"model). Ranked by the mean; `≈ name` marks a group whose mean is within {TIE_SIGMAS:g} standard "
    "errors (Welch's) of `name`'s, ranked just above it: these seeds cannot tell the two apart."
)
