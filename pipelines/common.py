"""What every stage entry point shares: arguments, config loading, clean exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from components.config import ConfigError, PipelineConfig, load_config

EXIT_CONFIG = 2
MODEL = "{model}"  # stands for --model's value in a path argument's default


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser that knows which of its arguments are paths the stage reads or writes.

    ``inputs`` / ``outputs`` map each path argument to its default (``{model}`` standing for the
    model name), and ``reads`` lists what the stage reads under a root argument; a test compares
    them with the stage's ``deps`` and ``outs`` in ``dvc.yaml``.
    """

    def __init__(self, description: str | None, model: bool = False, plain: bool = False):
        super().__init__(description=description)
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.reads: list[str] = []
        self.add_argument("--params", default="params.yaml", help="pipeline configuration (default: params.yaml)")
        self.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a parameter, e.g. --set train.gan.epochs=3 (repeatable)")
        if model:
            self.add_argument("--model", required=True, help="model name: a section of params.yaml's train")
        if model or plain:
            self.add_argument("--plain", action="store_true", help="run in this process without Ray (debugging)")

    def path(self, flag: str, default: str, *, output: bool = False, help: str = "") -> None:
        """Add a path argument the stage reads (or, with ``output``, writes)."""
        self.add_argument(flag, default=default, help=f"{help} (default: {default})".strip())
        (self.outputs if output else self.inputs)[flag.lstrip("-").replace("-", "_")] = default

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        for dest in (*self.inputs, *self.outputs):
            setattr(parsed, dest, getattr(parsed, dest).replace(MODEL, getattr(parsed, "model", MODEL)))
        return parsed


def parser(description: str | None, model: bool = False, plain: bool = False) -> StageParser:
    """A StageParser with ``--params`` and ``--set``; ``--model`` and ``--plain`` for a model's stages,
    ``--plain`` alone with ``plain`` (a compute stage without a model)."""
    return StageParser(description, model, plain)


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
