"""What the benchmark scripts share: devices, clocks, medians, configs, the report format.

Only torch, numpy, PyYAML and the project's ``components`` (which need pydantic) are
imported here, so the scripts run on a GPU box without Ray, MLflow or DVC.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from components.models import FAMILIES as GENERATIVE

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = tuple(GENERATIVE)


# --------------------------------------------------------------------------- device and clocks
def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a clock read after it measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the device synchronised before both clock reads."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def setup_threads(device: torch.device, threads: int | None) -> int:
    """Set torch's intra-op threads (default: 1 on CPU, as params.yaml gives each Ray worker 1 CPU)."""
    if threads is None:
        threads = 1 if device.type == "cpu" else min(4, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def use_worker_allocator(choice: str) -> None:
    """``choice == "workers"``: run this process with the malloc settings Ray workers get.

    glibc reads them only at start-up, so the process re-executes itself once with them set
    (values already in the environment win, as they do for the workers). Then (a), (b) and (c)
    compare loops under one allocator, not the allocator of a driver with a Train worker's.
    """
    from components.distributed.malloc import MALLOC_SETTINGS

    missing = {k: v for k, v in MALLOC_SETTINGS.items() if k not in os.environ}
    if choice == "workers" and missing:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})


def allocator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allocator", choices=("workers", "glibc"), default="workers",
                   help="workers (default): this process trains with the malloc settings the stage's Ray "
                        "workers get (components/distributed/malloc.py); glibc: glibc's defaults here")


# --------------------------------------------------------------------------- configs
def family_configs(quick: bool, families: Sequence[str]) -> dict[str, Any]:
    """The validated training section of each family: params.yaml's, or the smoke profile's (``quick``).

    Returns:
        family -> its config (the first ``train`` section of that family).
    """
    from components.config import model_config_from_dict, read_raw_params

    raw = read_raw_params(ROOT / "params.yaml", ["profile=smoke" if quick else "profile=default"])
    found: dict[str, Any] = {}
    for section in raw["train"].values():
        family = section.get("family")
        if family in families and family not in found:
            found[family] = model_config_from_dict(section)
    missing = set(families) - set(found)
    if missing:
        raise SystemExit(f"error: params.yaml has no train section for {sorted(missing)}")
    return {f: found[f] for f in families}


def classifier_config(quick: bool) -> Any:
    """params.yaml's (or the smoke profile's) classifier section, validated."""
    from components.config import ClassifierConfig, read_raw_params

    raw = read_raw_params(ROOT / "params.yaml", ["profile=smoke" if quick else "profile=default"])
    return ClassifierConfig.model_validate(raw.get("classifier", {}))


def with_settings(cfg: Any, **settings: Any) -> Any:
    """A re-validated copy of a family config with some fields replaced."""
    from components.config import model_config_from_dict

    return model_config_from_dict({**cfg.model_dump(mode="json"), **settings})


# --------------------------------------------------------------------------- reporting
def machine() -> dict[str, Any]:
    """Where and when the numbers were taken."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "malloc": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers with ``digits`` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table on stdout (pastes straight into docs/benchmarks.md)."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def emit_json(result: dict[str, Any], path: str | None) -> None:
    """The whole result as the last stdout line (one JSON object), and into ``path`` when given."""
    line = json.dumps(result, sort_keys=True, allow_nan=True)
    if path:
        Path(path).write_text(line + "\n")
    print(line, flush=True)


def common_args(description: str) -> argparse.ArgumentParser:
    """The options every speed script takes (read by ``parse``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, 4 on GPU)")
    p.add_argument("--quick", action="store_true", help="tiny models and data: checks that it runs, in seconds")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON result to PATH")
    return p


def parse_families(text: str) -> list[str]:
    families = [f for f in text.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"error: unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    return families


class Setup(NamedTuple):
    """A speed script's parsed command line and what it decides."""

    args: argparse.Namespace
    device: torch.device
    threads: int
    families: list[str]


def parse(p: argparse.ArgumentParser, cpu_only: bool = False) -> Setup:
    """Parse ``common_args``' options: with ``--allocator`` (``allocator_args``) re-run under it first,
    then pick the device (cpu alone with ``cpu_only``), set the threads and check ``--families``."""
    args = p.parse_args()
    if "allocator" in vars(args):
        use_worker_allocator(args.allocator)
    device = torch.device("cpu") if cpu_only else pick_device(args.device)
    return Setup(args, device, setup_threads(device, args.threads), parse_families(args.families))
