"""The leaderboard: read every stage's outputs, turn them into rows, print them as Markdown.

Rows come in three kinds, so every number is read between two references:

* ``floor``: real training images scored against the real test split (``metrics/classifier.json``):
  the best FID this extractor and this N can give;
* ``model``: each trained model's samples, sorted by FID;
* ``ceiling``: the same architecture at initialisation (``ceiling_*`` in ``metrics/NAME.json``).

``±`` is the bootstrap standard deviation of FID (both feature sets resampled with replacement),
so two models whose FIDs differ by less than the noise are marked as tied (``≈``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components import layout
from components.config import PipelineConfig
from components.report.curves import EPOCH_KEYS

#: Two FIDs closer than this many standard deviations of their difference are called a tie.
TIE_SIGMAS = 2.0
DASH = "—"


class ReportInputError(FileNotFoundError):
    """An input of the report is missing or unreadable; the message names the stage to run."""


# --------------------------------------------------------------------------- inputs
@dataclass
class ModelInputs:
    """Everything the earlier stages wrote about one model."""

    name: str
    metrics: dict[str, Any]  # metrics/NAME.json
    history: list[dict[str, Any]]  # models/NAME/history.json
    config: dict[str, Any]  # models/NAME/config.json: {name, config, data_spec, data_checksum}
    run: dict[str, Any]  # models/NAME/mlflow_run.json: {run_id, experiment, tracking_uri}
    grid_png: bytes  # samples/NAME/grid.png
    loss_png: bytes  # models/NAME/loss.png


@dataclass
class ReportInputs:
    """The classifier's summary, the data set's meta and every model's inputs (in params order)."""

    classifier: dict[str, Any]
    meta: dict[str, Any]
    models: dict[str, ModelInputs] = field(default_factory=dict)


#: what ``load_inputs`` reads under the project root (the report stage's dependencies)
REPORT_INPUTS = (layout.METRICS, layout.MODELS, layout.SAMPLES, layout.META)


def _stage_hint(rel: str) -> str:
    """Which stage writes ``rel`` (a path relative to the project root)."""
    parts = Path(rel).parts
    if rel == layout.CLASSIFIER_METRICS:
        return "the classifier stage (dvc repro classifier)"
    if parts[0] == "data":
        return "the fetch stage (dvc repro fetch)"
    stage = {"metrics": "evaluate", "samples": "sample", "models": "train"}[parts[0]]
    name = Path(rel).stem if parts[0] == "metrics" else parts[1]
    return f"the {stage} stage (dvc repro {stage}@{name})"


def _read(root: Path, rel: str, kind: Literal["json", "bytes"]) -> Any:
    """Read ``root/rel``; a missing or broken file raises ReportInputError naming its stage."""
    path = root / rel
    if not path.is_file():
        raise ReportInputError(f"{rel} missing: run {_stage_hint(rel)} first")
    if kind == "bytes":
        return path.read_bytes()
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{rel} is not valid JSON ({exc}): re-run {_stage_hint(rel)}") from None


def load_inputs(names: list[str], root: Path) -> ReportInputs:
    """Read the report's inputs under ``root`` for the models ``names``.

    Args:
        names: model names (the keys of params.yaml's ``train`` section).
        root: the project folder holding ``metrics/``, ``models/``, ``samples/`` and ``data/prepared``.

    Returns:
        The parsed inputs; raises ReportInputError on the first missing or unreadable file.
    """
    inputs = ReportInputs(classifier=_read(root, layout.CLASSIFIER_METRICS, "json"), meta=_read(root, layout.META, "json"))
    for name in names:
        model, samples = layout.model_dir(name), layout.samples_dir(name)
        inputs.models[name] = ModelInputs(
            name=name,
            metrics=_read(root, layout.metrics_file(name), "json"),
            history=_read(root, f"{model}/history.json", "json"),
            config=_read(root, f"{model}/config.json", "json"),
            run=_read(root, f"{model}/mlflow_run.json", "json"),
            grid_png=_read(root, f"{samples}/grid.png", "bytes"),
            loss_png=_read(root, f"{model}/loss.png", "bytes"),
        )
    return inputs


# --------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One leaderboard line. Metric values are ``None`` where the row kind has none."""

    label: str
    kind: Literal["model", "floor", "ceiling"]
    model: str | None  # the model a model/ceiling row belongs to
    family: str
    fid: float
    fid_std: float | None
    num_samples: int | None
    values: dict[str, float | None] = field(default_factory=dict)  # kid, kid_std, precision, ..., test_*
    parameters: int | None = None
    train_steps: int | None = None
    train_seconds: float | None = None
    images_seen: int | None = None
    rank: int | None = None
    tied_with: str | None = None  # the model ranked just above, when this one is within noise of it
    gap_closed: float | None = None  # share of the log-FID gap ceiling -> floor the model closed
    registered: str | None = None  # ``models:/NAME/VERSION``, once the evaluate stage registered the run
    registered_url: str | None = None  # that version's page on an MLflow server (None for a local store)


SAMPLE_KEYS = ("kid", "kid_std", "precision", "recall", "density", "coverage")


def training_compute(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """Seconds trained and images seen, summed over the history's epoch rows.

    Args:
        history: ``models/NAME/history.json``; epoch rows hold ``epoch_seconds`` and the
            all-worker ``images_per_s``.

    Returns:
        ``(seconds, images)``, each ``None`` when the history has no epoch rows.
    """
    epochs = [r for r in history if EPOCH_KEYS <= r.keys()]
    if not epochs:
        return None, None
    seconds = sum(float(r["epoch_seconds"]) for r in epochs)
    images = sum(float(r["epoch_seconds"]) * float(r["images_per_s"]) for r in epochs)
    return seconds, round(images)


def held_out_keys(inputs: ReportInputs) -> list[str]:
    """The family scores on real held-out images present in any model's metrics (``test_*``)."""
    return sorted({k for m in inputs.models.values() for k in m.metrics if k.startswith("test_")})


def _model_row(m: ModelInputs, held_out: list[str]) -> Row:
    seconds, images = training_compute(m.history)
    keys = (*SAMPLE_KEYS, "cond_acc", *held_out)
    return Row(label=m.name, kind="model", model=m.name, family=m.metrics.get("family", "?"),
               fid=float(m.metrics["fid"]), fid_std=m.metrics.get("fid_std"), num_samples=m.metrics.get("num_samples"),
               values={k: m.metrics.get(k) for k in keys}, parameters=m.metrics.get("parameters"),
               train_steps=m.metrics.get("train_steps"), train_seconds=seconds, images_seen=images,
               **registered_version(m))


def registered_version(m: ModelInputs) -> dict[str, str | None]:
    """The model's registry version (``metrics/NAME.json``) and, on an MLflow server, its page."""
    name, version = m.metrics.get("registered_model"), m.metrics.get("model_version")
    if not name or version is None:
        return {}
    server = str(m.run.get("tracking_uri", ""))
    url = f"{server.rstrip('/')}/#/models/{name}/versions/{version}" if server.startswith(("http://", "https://")) \
        else None
    return {"registered": f"models:/{name}/{version}", "registered_url": url}


def _ceiling_row(m: ModelInputs) -> Row:
    return Row(label=f"{m.name} untrained", kind="ceiling", model=m.name, family=m.metrics.get("family", "?"),
               fid=float(m.metrics["ceiling_fid"]), fid_std=m.metrics.get("ceiling_fid_std"),
               num_samples=m.metrics.get("ceiling_samples"),
               values={"kid": m.metrics.get("ceiling_kid"), "kid_std": m.metrics.get("ceiling_kid_std")},
               parameters=m.metrics.get("parameters"), train_steps=0)


def _floor_row(classifier: dict[str, Any]) -> Row:
    floor = classifier.get("floor", {})
    return Row(label="data floor", kind="floor", model=None, family="real images", fid=float(floor["fid"]),
               fid_std=floor.get("fid_std"), num_samples=classifier.get("num_samples"),
               values={k: floor.get(k) for k in SAMPLE_KEYS})


def _gap_closed(fid: float, floor: float, ceiling: float) -> float | None:
    """How far from the ceiling towards the floor a FID got, on a log scale (1 = at the floor)."""
    if min(fid, floor, ceiling) <= 0 or ceiling <= floor:
        return None
    return (math.log(ceiling) - math.log(fid)) / (math.log(ceiling) - math.log(floor))


def _within_noise(a: Row, b: Row) -> bool:
    """Whether the FIDs of ``a`` and ``b`` differ by less than TIE_SIGMAS bootstrap stds of the difference."""
    if a.fid_std is None or b.fid_std is None:
        return False
    return abs(a.fid - b.fid) < TIE_SIGMAS * math.hypot(a.fid_std, b.fid_std)


def collect_rows(inputs: ReportInputs) -> list[Row]:
    """Floor row, then the models best FID first, then their untrained ceilings (best first).

    Args:
        inputs: from :func:`load_inputs`.

    Returns:
        The rows in display order, with ranks, ties and the gap each model closed filled in.
    """
    held_out = held_out_keys(inputs)
    floor = _floor_row(inputs.classifier)
    models = sorted((_model_row(m, held_out) for m in inputs.models.values()), key=lambda r: r.fid)
    ceilings = sorted((_ceiling_row(m) for m in inputs.models.values()), key=lambda r: r.fid)
    ceiling_of = {r.model: r for r in ceilings}
    for i, row in enumerate(models):
        row.rank = i + 1
        row.gap_closed = _gap_closed(row.fid, floor.fid, ceiling_of[row.model].fid)
        if i and _within_noise(row, models[i - 1]):
            row.tied_with = models[i - 1].label
    return [floor, *models, *ceilings]


# --------------------------------------------------------------------------- formatting
def fmt(x: float | None, style: Literal["fid", "sig", "frac", "int", "secs", "pct"] = "sig") -> str:
    """Format a number for a table cell; ``None`` or NaN gives a dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return DASH
    if style == "fid":
        return f"{x:.2f}"
    if style == "frac":
        return f"{x:.3f}"
    if style == "int":
        return f"{int(x):,}"
    if style == "secs":
        return f"{x:,.1f}"
    if style == "pct":
        return f"{100 * x:.0f}%"
    if x == 0 or 1e-3 <= abs(x) < 1e5:  # 3 significant digits without an exponent
        return f"{x:,.{max(0, 2 - math.floor(math.log10(abs(x))))}f}" if x else "0"
    return f"{x:.2e}"


def _pm(value: float | None, std: float | None, style: Literal["fid", "sig"]) -> str:
    return fmt(value, style) if std is None or value is None else f"{fmt(value, style)} ± {fmt(std, style)}"


def _rank(row: Row) -> str:
    if row.rank is None:
        return ""
    return f"{row.rank} ≈ {row.tied_with}" if row.tied_with else str(row.rank)


Column = tuple[str, Callable[[Row], str]]


def columns(inputs: ReportInputs) -> list[Column]:
    """The table's columns as ``(header, cell formatter)``; cond. acc and held-out scores only when present."""
    cols: list[Column] = [
        ("#", _rank),
        ("model", lambda r: r.label),
        ("family", lambda r: r.family),
        ("FID ± std", lambda r: _pm(r.fid, r.fid_std, "fid")),
        ("gap closed", lambda r: fmt(r.gap_closed, "pct")),
        ("KID ± std", lambda r: _pm(r.values.get("kid"), r.values.get("kid_std"), "sig")),
        *((k, lambda r, k=k: fmt(r.values.get(k), "frac")) for k in ("precision", "recall", "density", "coverage")),
    ]
    if any("cond_acc" in m.metrics for m in inputs.models.values()):
        cols.append(("cond. acc", lambda r: fmt(r.values.get("cond_acc"), "frac")))
    cols += [(k, lambda r, k=k: fmt(r.values.get(k), "sig")) for k in held_out_keys(inputs)]
    cols += [
        ("parameters", lambda r: fmt(r.parameters, "int")),
        ("train steps", lambda r: fmt(r.train_steps, "int")),
        ("train s", lambda r: fmt(r.train_seconds, "secs")),
        ("images seen", lambda r: fmt(r.images_seen, "int")),
        ("N", lambda r: fmt(r.num_samples, "int")),
    ]
    if any(m.metrics.get("model_version") is not None for m in inputs.models.values()):
        cols.append(("registered", lambda r: r.registered or ""))
    return cols


READING_NOTE = (
    "FID and KID: lower is better. Read each model between the **data floor** (real training images "
    "vs the test split: the best this extractor and N allow) and its **untrained ceiling** (the same "
    "architecture at initialisation). *gap closed* is how far a model moved from its ceiling towards "
    "the floor on a log-FID scale (100% = as good as real data, 0% = no better than untrained). "
    "± is the bootstrap standard deviation of FID; `≈ name` marks a model whose FID is within "
    f"{TIE_SIGMAS:g} standard deviations (of the difference) of `name`, ranked just above it: the data "
    "cannot tell the two apart."
)


def markdown_table(inputs: ReportInputs, rows: list[Row]) -> str:
    """The leaderboard as one GitHub-flavoured Markdown table (floor, models by FID, ceilings)."""
    cols = columns(inputs)
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        cells = [cell(row).replace("|", "\\|") for _, cell in cols]
        if row.kind != "model":
            cells[1] = f"*{cells[1]}*"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- header facts and checks
def run_facts(cfg: PipelineConfig, inputs: ReportInputs, git: dict[str, str]) -> list[tuple[str, str]]:
    """What a reader needs to reproduce or trust the numbers, as ``(label, text)`` pairs.

    Args:
        cfg: the resolved pipeline config (profile, seeds, bootstrap repeats).
        inputs: from :func:`load_inputs`.
        git: ``components.provenance.git_info()`` of the project.

    Returns:
        Data set, N, extractor, seeds, code version, profile, MLflow experiment and run ids.
    """
    meta, ev, models = inputs.meta, inputs.classifier, inputs.models.values()
    counts = meta.get("counts", {})
    data_sums = sorted({str(m.config.get("data_checksum", "?")) for m in models})
    n_gen = sorted({int(m.metrics.get("num_samples", 0)) for m in models})
    n_ceiling = sorted({int(m.metrics.get("ceiling_samples", 0)) for m in models})
    train_seeds = {m.name: m.config.get("config", {}).get("seed", "?") for m in models}
    seeds = (f"train {next(iter(train_seeds.values()))} (every model)" if len(set(train_seeds.values())) == 1
             else "train " + ", ".join(f"{k} {v}" for k, v in train_seeds.items()))
    experiments = sorted({str(m.run.get("experiment", "?")) for m in models})
    uris = sorted({str(m.run.get("tracking_uri", "?")) for m in models})
    dirty = " (with uncommitted changes)" if git.get("git_dirty") == "True" else ""
    data = (f"{meta.get('name', '?')} (source {meta.get('source', cfg.data.source)}; "
            f"{fmt(counts.get('train'), 'int')} train / {fmt(counts.get('test'), 'int')} test images; "
            f"data checksum {', '.join(data_sums)})")
    n = (f"{' / '.join(fmt(k, 'int') for k in n_gen)} generated images per model vs "
         f"{fmt(ev.get('num_samples'), 'int')} real test images; ceilings from "
         f"{' / '.join(fmt(k, 'int') for k in n_ceiling)} untrained samples; "
         f"± over {max(cfg.evaluate.fid_subsets, 2)} bootstrap resamples")
    extractor = (f"checksum {ev.get('extractor_checksum', '?')}; in-domain CNN classifier, "
                 f"test accuracy {_percent(ev.get('test_accuracy'))}")
    seed_text = (f"data {cfg.data.seed} · {seeds} · sample {cfg.sample.seed} · evaluate {cfg.evaluate.seed} · "
                 f"classifier {cfg.classifier.seed}")
    return [
        ("Data set", data),
        ("N", n),
        ("Extractor", extractor),
        ("Seeds", seed_text),
        ("Code", f"git commit {git.get('git_commit', 'unknown')}{dirty}"),
        ("Profile", cfg.profile),
        ("MLflow", f"experiment {', '.join(experiments)} at {', '.join(uris)}"),
        ("MLflow runs", ", ".join(f"{m.name} {m.run.get('run_id', '?')}" for m in models)),
    ]


def _percent(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}%"


def consistency_warnings(inputs: ReportInputs, rows: list[Row]) -> list[str]:
    """Reasons not to compare the rows as they stand (stale metrics, unequal N, untrained-level models)."""
    out: list[str] = []
    extractor = inputs.classifier.get("extractor_checksum")
    for m in inputs.models.values():
        if m.metrics.get("extractor_checksum") != extractor:
            out.append(f"{m.name} was scored with extractor {m.metrics.get('extractor_checksum')}, not the current "
                       f"{extractor}: its numbers are not comparable (re-run evaluate@{m.name}).")
    if len({m.metrics.get("num_samples") for m in inputs.models.values()}) > 1:
        out.append("Models were scored on different numbers of samples: FID is biased by N, so compare with care.")
    if len({m.config.get("data_checksum") for m in inputs.models.values()}) > 1:
        out.append("Models were trained on different prepared data (data checksums differ).")
    ceiling = {r.model: r.fid for r in rows if r.kind == "ceiling"}
    for r in rows:
        if r.kind == "model" and r.fid >= ceiling[r.model]:
            out.append(f"{r.label} is no better than untrained (FID {fmt(r.fid, 'fid')} vs ceiling "
                       f"{fmt(ceiling[r.model], 'fid')}).")
    return out


def markdown_report(facts: list[tuple[str, str]], table: str, warnings: list[str],
                    across_seeds: tuple[str, str] | None = None) -> str:
    """``reports/leaderboard.md``: the facts, the table, how to read it, the table across seeds
    (``(table, note)``, when a model has several) and any warnings."""
    lines = ["# Leaderboard", "", *(f"- **{label}**: {text}" for label, text in facts), "", table, READING_NOTE]
    if across_seeds:
        lines += ["", "## Across seeds", "", *across_seeds]
    if warnings:
        lines += ["", *(f"> **Warning:** {w}  " for w in warnings)]
    return "\n".join(lines) + "\n"
