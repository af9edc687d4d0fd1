"""The self-contained HTML report: header facts, leaderboard, FID against compute, every model's
samples and loss curves. Images are embedded as base64 PNG and the CSS is inline, so the one
file opens anywhere (no network, no fonts, no scripts).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from components.config import PipelineConfig
from components.models import FAMILIES
from components.provenance import git_info
from components.report.leaderboard import (
    READING_NOTE,
    ReportInputs,
    Row,
    collect_rows,
    columns,
    consistency_warnings,
    fmt,
    load_inputs,
    markdown_report,
    markdown_table,
    run_facts,
)
from components.report.seeds import HEADERS as SEED_HEADERS
from components.report.seeds import SEEDS_NOTE, SeedGroup, has_seeds, seed_cells, seed_groups, seeds_table

if TYPE_CHECKING:
    from matplotlib.axis import Axis

PALETTE = ("#d62728", "#ff7f0e", "#8c564b", "#1f77b4", "#9467bd", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FAMILY_COLOURS = dict(zip(FAMILIES, PALETTE))  # a colour per registered family, in FAMILIES' order
FLOOR_COLOUR = "#2a9d4b"


def build_report(cfg: PipelineConfig, root: Path) -> tuple[str, str]:
    """Read the pipeline's outputs under ``root`` and render the report.

    Args:
        cfg: the resolved pipeline config; its ``train`` keys are the models to report.
        root: the project folder (``metrics/``, ``models/``, ``samples/``, ``data/prepared/``, git).

    Returns:
        ``(html, markdown)``: ``reports/index.html`` and ``reports/leaderboard.md``.
    """
    inputs = load_inputs(list(cfg.train), root)
    rows = collect_rows(inputs)
    facts = run_facts(cfg, inputs, git_info(root))
    warnings = consistency_warnings(inputs, rows)
    groups = seed_groups(inputs, rows)
    across_seeds = (seeds_table(groups), SEEDS_NOTE) if has_seeds(groups) else None
    markdown = markdown_report(facts, markdown_table(inputs, rows), warnings, across_seeds)
    return html_page(cfg, inputs, rows, facts, warnings, groups if has_seeds(groups) else []), markdown


# --------------------------------------------------------------------------- seeds
def seeds_plot(groups: list[SeedGroup]) -> bytes:
    """PNG: each group's FIDs, one dot per seed, with its mean and ± one std across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(groups) + 1.5), 3.6), dpi=110)
    for x, g in enumerate(groups):
        colour = FAMILY_COLOURS.get(g.family, "#444444")
        spread = [x + 0.08 * (i - (len(g.fids) - 1) / 2) for i in range(len(g.fids))]
        ax.scatter(spread, g.fids, s=30, color=colour, alpha=0.8, zorder=3)
        ax.errorbar([x + 0.3], [g.fid_mean], yerr=[[g.fid_seed_std or 0.0], [g.fid_seed_std or 0.0]], fmt="_",
                    ms=14, color=colour, capsize=4, zorder=4)
    ax.set_xticks(range(len(groups)), [f"{g.label}\n({len(g.fids)} seed{'s' if len(g.fids) > 1 else ''})"
                                       for g in groups], fontsize=9)
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3, axis="y")
    ax.margins(x=0.15)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def seeds_section(groups: list[SeedGroup]) -> str:
    """The "Across seeds" section: table, plot and how to read them ('' when no model has two seeds)."""
    if not groups:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in SEED_HEADERS)
    body = "".join("<tr class=\"model\">" + "".join(f"<td>{_e(c)}</td>" for c in seed_cells(g)) + "</tr>"
                   for g in groups)
    return (f'<section id="seeds"><h2>Across seeds</h2><div class="scroll"><table class="board"><thead><tr>{head}'
            f'</tr></thead><tbody>{body}</tbody></table></div>{_img(seeds_plot(groups), "FID per seed", "plot")}'
            f'<p class="note">{_inline_md(SEEDS_NOTE)}</p></section>')


# --------------------------------------------------------------------------- the compute plot
def compute_plot(rows: list[Row]) -> bytes:
    """PNG of FID (log) against training time and against images seen, one labelled point per model.

    Each model's untrained ceiling is the hollow marker above it (dotted), the data floor the
    dashed line; error bars are the bootstrap std.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    floor = next(r for r in rows if r.kind == "floor")
    ceiling = {r.model: r.fid for r in rows if r.kind == "ceiling"}
    models = [r for r in rows if r.kind == "model"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), dpi=110, sharey=True)
    panels = (("train_seconds", "training time (s, sum of epoch wall-clock; depends on hardware)"),
              ("images_seen", "training images seen (all workers)"))
    for ax, (attr, xlabel) in zip(axes, panels):
        for r in models:
            x = getattr(r, attr)
            if not x:
                continue
            colour = FAMILY_COLOURS.get(r.family, "#444444")
            ax.plot([x, x], [r.fid, ceiling[r.model]], ls=":", color=colour, alpha=0.6, lw=1)
            ax.scatter([x], [ceiling[r.model]], s=36, facecolors="white", edgecolors=colour, zorder=3)
            low = min(r.fid_std or 0.0, 0.9 * r.fid)  # keep the bar above zero on the log axis
            ax.errorbar([x], [r.fid], yerr=[[low], [r.fid_std or 0.0]], fmt="o", ms=7, color=colour, capsize=3,
                        zorder=4)
            right = (r.rank or 0) % 2 == 1  # alternate sides: neighbours in FID do not print over each other
            ax.annotate(r.label, (x, r.fid), textcoords="offset points", xytext=(8 if right else -8, 4),
                        ha="left" if right else "right", fontsize=9, color=colour)
        ax.axhline(floor.fid, color=FLOOR_COLOUR, ls="--", lw=1.3)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25)
    if floor.fid > 0:
        axes[0].set_yscale("log")
    for axis in (axes[0].xaxis, axes[1].xaxis, axes[0].yaxis):
        _plain_log_ticks(axis)
    axes[0].set_ylabel("FID (log scale, lower is better)")
    handles = [Line2D([], [], color="#555", marker="o", ls="", label="trained (± bootstrap std)"),
               Line2D([], [], color="#555", marker="o", mfc="white", ls="", label="same model untrained"),
               Line2D([], [], color=FLOOR_COLOUR, ls="--", label=f"data floor (FID {fmt(floor.fid, 'fid')})")]
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _plain_log_ticks(axis: Axis) -> None:
    """Tick labels as plain numbers (2,000 rather than 2x10^3); minor ticks at 2 and 5 over short ranges."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def plain(v: float, _pos: object = None) -> str:
        return f"{v:,.0f}" if v >= 10 else f"{v:g}"

    def leading_2_or_5(v: float, _pos: object = None) -> str:
        return plain(v) if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""

    if axis.get_scale() != "log":
        return
    lo, hi = sorted(axis.get_view_interval())
    axis.set_major_formatter(FuncFormatter(plain))
    axis.set_minor_formatter(FuncFormatter(leading_2_or_5) if lo > 0 and hi / lo < 300 else NullFormatter())


# --------------------------------------------------------------------------- HTML pieces
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _inline_md(text: str) -> str:
    """Escape, then render the few Markdown marks the notes use (**bold**, *italic*, `code`)."""
    out = _e(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"\*(.+?)\*", r"<em>\1</em>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _cell(header: str, row: Row, text: str) -> str:
    """One ``<td>``: a bar for the gap closed, a marked tie, the family beside a model's name."""
    if header == "gap closed" and row.gap_closed is not None:
        width = max(0.0, min(1.0, row.gap_closed)) * 100
        return f'<td class="num"><span class="bar"><span style="width:{width:.0f}%"></span></span>{_e(text)}</td>'
    if header == "#" and row.tied_with:
        return f'<td><span class="tie" title="FID within noise of {_e(row.tied_with)}">{_e(text)}</span></td>'
    if header == "registered" and row.registered_url:
        return f'<td><a href="{_e(row.registered_url)}">{_e(text)}</a></td>'
    if header == "registered":
        return f"<td><code>{_e(text)}</code></td>" if text else "<td></td>"
    if header == "model":
        family = row.kind == "model" and row.family != row.label
        return f"<td>{_e(text)}" + (f' <span class="fam">{_e(row.family)}</span>' if family else "") + "</td>"
    return f'<td class="{"fid num" if header.startswith("FID") else "num"}">{_e(text)}</td>'


def leaderboard_table(inputs: ReportInputs, rows: list[Row]) -> str:
    """The leaderboard as an HTML table; floor and ceiling rows carry their own CSS class.

    The family goes beside the model's name when they differ (no column of its own: the table is wide).
    """
    cols = [(h, cell) for h, cell in columns(inputs) if h != "family"]
    head = "".join(f"<th>{_e(h.replace('_', ' '))}</th>" for h, _ in cols)
    body = []
    for row in rows:
        cells = "".join(_cell(h, row, cell(row)) for h, cell in cols)
        body.append(f'<tr class="{row.kind}">{cells}</tr>')
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _model_card(cfg: PipelineConfig, inputs: ReportInputs, row: Row) -> str:
    m = inputs.models[row.model]
    model_cfg = m.config.get("config", {})
    class_names = inputs.meta.get("class_names", [])
    caption = "samples (fixed seed)"
    if row.values.get("cond_acc") is not None and len(class_names) == cfg.sample.grid_size:
        caption += "; columns are the requested classes: " + ", ".join(class_names)
    facts = [("FID", f"{fmt(row.fid, 'fid')} ± {fmt(row.fid_std, 'fid')}"), ("gap closed", fmt(row.gap_closed, "pct")),
             ("parameters", fmt(row.parameters, "int")), ("train steps", fmt(row.train_steps, "int")),
             ("training time", f"{fmt(row.train_seconds, 'secs')} s"), ("images seen", fmt(row.images_seen, "int")),
             ("batch size", model_cfg.get("batch_size", "?")), ("seed", model_cfg.get("seed", "?")),
             ("MLflow run", m.run.get("run_id", "?")), ("registered", row.registered or "not yet")]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (f'<article class="card" id="model-{_e(m.name)}"><h3><span class="rank">#{row.rank}</span> {_e(m.name)} '
            f'<span class="badge" style="background:{FAMILY_COLOURS.get(row.family, "#444")}">{_e(row.family)}</span>'
            f'</h3><div class="card-body">'
            f'<figure class="g">{_img(m.grid_png, f"{m.name} samples", "grid")}<figcaption>{_e(caption)}</figcaption></figure>'
            f'<figure>{_img(m.loss_png, f"{m.name} loss curves", "loss")}<figcaption>training losses</figcaption>'
            f'</figure><dl class="mini">{dl}</dl></div></article>')


def html_page(cfg: PipelineConfig, inputs: ReportInputs, rows: list[Row], facts: list[tuple[str, str]],
              warnings: list[str], seed_groups: list[SeedGroup] | None = None) -> str:
    """Assemble the whole page (one string, no external resources)."""
    data_name = inputs.meta.get("name", cfg.data.source)
    facts_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    warn_html = "".join(f'<p class="warn">⚠ {_e(w)}</p>' for w in warnings)
    cards = "".join(_model_card(cfg, inputs, r) for r in rows if r.kind == "model")
    plot = _img(compute_plot(rows), "FID against training compute", "plot")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Generative models on {_e(data_name)}: report</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>Generative models on {_e(data_name)}</h1>
<p class="lede">{len(inputs.models)} models trained, sampled and scored with the same in-domain feature extractor.
Profile <strong>{_e(cfg.profile)}</strong>.</p></header>
<section class="facts"><dl>{facts_html}</dl></section>
{warn_html}
<section id="leaderboard"><h2>Leaderboard</h2>
<div class="scroll">{leaderboard_table(inputs, rows)}</div>
<p class="note">{_inline_md(READING_NOTE)}</p></section>
{seeds_section(seed_groups or [])}
<section id="compute"><h2>FID against training compute</h2>{plot}
<p class="note">Left: wall-clock training time (the sum of the epochs' times; it depends on the hardware).
Right: training images seen, which does not. Hollow markers are the same models untrained; the dashed
line is the data floor. Error bars are the bootstrap std.</p></section>
<section id="models"><h2>Samples and loss curves</h2>{cards}</section>
<footer>Written by <code>python -m pipelines.report</code> from <code>metrics/</code>, <code>models/</code>
and <code>samples/</code>. This file is self-contained.</footer>
</main></body></html>
"""


CSS = """
:root { --ink:#1d2430; --muted:#5b6675; --line:#e3e7ee; --bg:#f6f7fb; --card:#fff; --floor:#e6f5ea;
        --floor-ink:#1f6b35; --ceil:#f1f1f3; --accent:#3b5bdb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width:1280px; margin:0 auto; padding:24px 24px 48px; }
h1 { font-size:28px; margin:0 0 4px; letter-spacing:-0.01em; }
h2 { font-size:20px; margin:36px 0 12px; padding-bottom:6px; border-bottom:2px solid var(--line); }
h3 { font-size:17px; margin:0 0 10px; display:flex; align-items:center; gap:8px; }
.lede { color:var(--muted); margin:0 0 18px; }
code { font:13px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; background:#eef0f5;
       padding:1px 4px; border-radius:3px; }
.facts dl { display:grid; grid-template-columns:max-content 1fr; gap:6px 18px; margin:0; padding:16px 20px;
            background:var(--card); border:1px solid var(--line); border-radius:10px; }
.facts dt { font-weight:600; color:var(--muted); }
.facts dd { margin:0; overflow-wrap:anywhere; }
.warn { background:#fff4e0; border:1px solid #f0c36d; border-radius:8px; padding:8px 14px; margin:12px 0; }
.scroll { overflow-x:auto; background:var(--card); border:1px solid var(--line); border-radius:10px; }
table.board { border-collapse:collapse; width:100%; font-size:13px; white-space:nowrap; }
.board th { text-align:left; font-weight:600; color:var(--muted); background:#fafbfd; padding:8px 7px;
            border-bottom:1px solid var(--line); white-space:normal; vertical-align:bottom; }
.board td { padding:6px 7px; border-bottom:1px solid var(--line); }
.fam { color:var(--muted); font-size:12px; }
.board td.num { text-align:right; font-variant-numeric:tabular-nums; }
.board td.fid { font-weight:700; }
.board tr.model:hover td { background:#f3f6ff; }
.board tr.floor td { background:var(--floor); color:var(--floor-ink); border-bottom:2px solid #b7dfc2; }
.board tr.ceiling td { background:var(--ceil); color:var(--muted); font-style:italic; }
.board tr.ceiling:first-of-type td, .board tr.model + tr.ceiling td { border-top:2px solid #cfd3da; }
.bar { display:inline-block; width:40px; height:7px; background:#e4e7ee; border-radius:4px; margin-right:6px;
       vertical-align:middle; overflow:hidden; }
.bar > span { display:block; height:100%; background:var(--accent); }
.tie { color:#b25d00; font-weight:600; cursor:help; }
.note { color:var(--muted); font-size:13.5px; max-width:980px; }
img.plot { width:100%; max-width:1100px; display:block; background:#fff; border:1px solid var(--line);
           border-radius:10px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:16px 18px;
        margin:0 0 16px; }
.card-body { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
.card figure { margin:0; }
.card figure.g { width:320px; }
.card figcaption { color:var(--muted); font-size:12.5px; margin-top:4px; max-width:420px; }
img.grid { width:320px; height:auto; border:1px solid var(--line); display:block; }
img.loss { width:420px; display:block; border:1px solid var(--line); }
.rank { color:var(--muted); font-weight:500; }
.badge { color:#fff; font-size:12px; font-weight:600; padding:2px 8px; border-radius:10px; }
dl.mini { display:grid; grid-template-columns:max-content auto; gap:2px 12px; font-size:13px; margin:0;
          min-width:220px; }
dl.mini dt { color:var(--muted); }
dl.mini dd { margin:0; font-variant-numeric:tabular-nums; overflow-wrap:anywhere; }
footer { margin-top:40px; color:var(--muted); font-size:12.5px; }
"""
