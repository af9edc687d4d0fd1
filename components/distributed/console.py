"""What a Ray Train stage prints: its own lines on the terminal, Ray's chatter in the stage's log file.

Ray streams the stdout and stderr of every worker and actor of a job to the driver, which by
default prints them all: Train's controller and per-report/per-checkpoint lines, Ray Data's
coordinator and its progress fragments, MLflow's INFO lines. Here the driver appends every
streamed line to the stage's log file (``logs/<Ray run name>.log``, named in the stage's first
line) and shows on the terminal only what a person reads: the training workers' own output
(rank 0's progress bar, the stage's messages, Python warnings, tracebacks) and, from Ray's other
processes, lines that report a warning or an error. ``GENMODELS_VERBOSE=1`` (a stage's ``-v``)
shows everything as Ray would, and still writes the log.

The hook is Ray's driver-side stream dispatcher (``ray._private.ray_logging``), the one place
every streamed line passes; Ray's own printer (with its de-duplication of lines repeated across
workers) still prints what is shown.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

VERBOSE_ENV = "GENMODELS_VERBOSE"
#: the process that runs the job's training loop (rank 0's progress bar, our prints, warnings)
TRAIN_WORKER = "RayTrainWorker"
#: lines of a training worker that are Ray's or MLflow's routine, not the job's: log file only
ROUTINE = re.compile(
    r"(Setting up process group for|Wrapping provided model in|Checkpoint successfully created at"
    r"|Reporting training result|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO "
    r"|\u2714\ufe0f?\s+Dataset \S+ execution finished"  # Ray Data, in the rank that reads its share
    r"|Progress bars disabled\. To enable)"  # Ray Data's answer to QUIET_WORKER_ENV, once per rank
)
#: a line from any process that reports trouble: shown whatever process wrote it
ALARM = re.compile(r"Traceback \(most recent call last\)|\b\w*(Error|Exception|Warning)\b|\b(ERROR|WARNING|CRITICAL)\b")
#: what the driver sets for the job's processes when not verbose: Ray Data's progress bars are
#: fragments of carriage-return redraws once streamed (its finished-line stays in the log)
QUIET_WORKER_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def verbose() -> bool:
    """Whether the terminal gets everything Ray streams (``GENMODELS_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


def shown(process: str, line: str) -> bool:
    """Whether one streamed ``line`` of ``process`` (an actor's class name, or "" for a task) is shown."""
    if ALARM.search(line):
        return True
    return process == TRAIN_WORKER and not ROUTINE.match(line)


def without_routine(line: str) -> str:
    """A progress bar's redraw ends without a newline, so a routine line written next lands on the
    same streamed line (``train gan: 50%|... Checkpoint successfully created at: ...``): cut it off."""
    found = ROUTINE.search(line)
    return line[:found.start()].rstrip() if found else line


def last_redraw(line: str) -> str:
    """A progress bar's streamed line holds every redraw since the last poll, ``\r``-separated: the last one."""
    redraws = [part for part in line.split("\r") if part.strip()]
    return redraws[-1] if redraws else line


class StreamRouter:
    """Ray's stream handler: every line to the log file, the ``shown`` ones on to Ray's own printer.

    Args:
        log: the stage's log file, opened for appending (text).
        printer: Ray's printer, called with a batch holding only the lines to show.
        show_all: print every line (verbose).
    """

    def __init__(self, log: IO[str], printer: Callable[[dict[str, Any]], None], show_all: bool = False):
        self.log, self.printer, self.show_all = log, printer, show_all
        self.lock = threading.Lock()
        self.in_traceback: set[tuple[Any, Any]] = set()  # processes whose traceback is being streamed

    def __call__(self, batch: dict[str, Any]) -> None:
        process = batch.get("actor_name") or batch.get("task_name") or ""
        where = f"({process or 'task'} pid={batch.get('pid')}, ip={batch.get('ip')})"
        key = (batch.get("pid"), batch.get("ip"))
        keep = []
        with self.lock:
            for line in batch.get("lines", []):
                self.log.write(f"{where} {line}\n")
                if "Traceback (most recent call last)" in line:
                    self.in_traceback.add(key)
                elif key in self.in_traceback and line and not line[0].isspace() and ALARM.search(line):
                    self.in_traceback.discard(key)  # "ValueError: ...": the traceback's last line
                    keep.append(line)
                    continue
                if self.show_all or key in self.in_traceback:
                    keep.append(line)
                elif shown(process, line):
                    keep.append(without_routine(last_redraw(line)))
            self.log.flush()
        if keep:
            self.printer({**batch, "lines": keep})


def route_worker_output(log_path: str | Path) -> Path:
    """Send what Ray streams to this driver through a ``StreamRouter`` writing ``log_path``.

    Call after ``ray.init(log_to_driver=True)``; a second call re-targets the log file.

    Returns:
        The log file's path.
    """
    import functools

    from ray._private import ray_logging, worker

    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the driver's lifetime
    ignore_prefix = worker._should_ignore_worker_log_prefix(worker.global_worker)
    printer = functools.partial(worker.print_to_stdstream, ignore_prefix=ignore_prefix)
    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", StreamRouter(log, printer, show_all=verbose()))
    return path
