"""What every stage entry point shares: arguments, config loading, clean exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from components.config import ConfigError, PipelineConfig, load_config

EXIT_CONFIG = 2


def parser(description: str, model: bool = False) -> argparse.ArgumentParser:
    """An ArgumentParser with the common options (``--params``, ``--set``, optionally ``--model``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="pipeline configuration (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.gan.epochs=3 (repeatable)")
    if model:
        p.add_argument("--model", required=True, help="model name from params.yaml's models list")
        p.add_argument("--plain", action="store_true", help="run in this process without Ray (debugging)")
    return p


def load_or_exit(args: argparse.Namespace) -> PipelineConfig:
    """Validate the whole config before any work; on error print every problem and exit 2."""
    try:
        cfg = load_config(args.params, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if getattr(args, "model", None) and args.model not in cfg.train:
        print(f"error: --model {args.model!r} is not in params train sections: {sorted(cfg.train)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return cfg


def run_main(main: Callable[[], None], *errors: type[BaseException]) -> None:
    """Run ``main``; expected failures become a one-line ``error:`` and exit 1 (no traceback)."""
    try:
        main()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
