"""What every stage entry point shares: arguments, config loading, clean exits."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from components import layout
from components.config import ConfigError, PipelineConfig, load_config
from components.distributed import console

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
            self.add_argument("-v", "--verbose", action="store_true",
                              help=f"print everything Ray streams from the job's processes (also {console.VERBOSE_ENV}=1)")

    def path(self, flag: str, default: str, *, output: bool = False, help: str = "") -> None:
        """Add a path argument the stage reads (or, with ``output``, writes)."""
        self.add_argument(flag, default=default, help=f"{help} (default: {default})".strip())
        (self.outputs if output else self.inputs)[flag.lstrip("-").replace("-", "_")] = default

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "verbose", False):
            os.environ[console.VERBOSE_ENV] = "1"  # read by the Ray job's driver (components/distributed/console.py)
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


def run_main(arguments: Callable[[], StageParser], main: Callable[[argparse.Namespace, PipelineConfig], None],
             *errors: type[BaseException]) -> None:
    """Parse the command line with ``arguments()``, load the config (exit 2 if invalid) and run
    ``main(args, cfg)``; expected failures become a one-line ``error:`` and exit 1 (no traceback).

    Either way the stage's time is appended to ``logs/stages.jsonl`` (``make run``'s summary reads
    it). Unless verbose, MLflow's INFO lines and download bars stay off the terminal.
    """
    started, ok = time.time(), False
    try:
        args = arguments().parse_args()  # first: -v decides what follows
        if not console.verbose():
            # MLflow sets its loggers' level when it is imported (maybe later, lazily): both ways.
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        main(args, load_or_exit(args))
        ok = True
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        record_stage_time(stage_label(sys.argv), started, time.time() - started, ok)
    exit_without_teardown(0)


def exit_without_teardown(code: int) -> NoReturn:
    """Exit as a normal exit does (every ``atexit`` handler runs: Ray's driver shutdown, MLflow's
    and logging's flushes, weakref finalizers; buffered output is flushed), then skip the
    interpreter's own teardown, which frees every module and C++ object one by one: with torch,
    Ray, MLflow and matplotlib loaded that took ~1.4 s of a stage's ~2.2 s exit (docs/benchmarks.md),
    on each of the pipeline's stages.

    Falls back to ``sys.exit`` while a non-daemon thread runs, which a normal exit would wait for.
    """
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # the handlers a normal exit runs after joining threads; the call clears them
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to lose
            pass
    os._exit(code)


def stage_label(argv: Sequence[str]) -> str:
    """``train@gan`` for ``.../pipelines/train.py --model gan`` (dvc.yaml's stage name), ``fetch`` for fetch."""
    model = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--model"), None)
    stem = Path(argv[0]).stem if argv else "stage"
    return f"{stem}@{model}" if model else stem


def record_stage_time(stage: str, started: float, seconds: float, ok: bool, path: str | Path | None = None) -> None:
    """Append one ``{"stage", "started", "seconds", "ok"}`` line (to ``logs_dir()/stages.jsonl``
    unless ``path`` is given); a stage never fails for want of this record."""
    path = path or layout.logs_dir() / layout.STAGE_TIMES
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"stage": stage, "started": round(started, 3), "seconds": round(seconds, 3),
                                  "ok": ok}) + "\n")
    except OSError as exc:
        print(f"warning: stage time not recorded in {path}: {exc}", file=sys.stderr)
