"""What a stage prints: the routing of Ray's streamed lines (terminal vs the stage's log file),
the stage-time records and the summary ``make run`` ends with."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.distributed.console import StreamRouter, last_redraw, shown
from components.report.summary import format_times, stage_times
from pipelines.common import record_stage_time, stage_label


@pytest.mark.parametrize(("process", "line", "want"), [
    ("RayTrainWorker", "train gan:  50%|#####     | 16/32 [00:01<00:01, 9.1step/s, loss_d=1.2]", True),
    ("RayTrainWorker", "gan: 32 steps per worker (2 epochs of 16), precision bf16 (auto: this CPU computes bf16 natively)", True),
    ("RayTrainWorker", "/x/train_jobs.py:121: ShortRunWarning: gan: 32 optimiser steps per worker", True),
    ("RayTrainWorker", "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/x)", False),
    ("RayTrainWorker", "Reporting training result 1: TrainingReport(checkpoint=...)", False),
    ("RayTrainWorker", "Setting up process group for: env:// [rank=0, world_size=2]", False),
    ("RayTrainWorker", "2026/12/05 16:06:24 INFO mlflow.system_metrics.system_metrics_monitor: Started monitoring", False),
    ("RayTrainWorker", "\u2714\ufe0f  Dataset train.rank0_0359p2uhVhDV4ItRbcMfoi_0 execution finished in 0.00 seconds", False),
    ("RayTrainWorker", "\u26a0\ufe0f  Dataset train.rank0_0359p2uhVhDV4ItRbcMfoi_0 execution failed", True),
    ("RayTrainWorker", "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_pro", False),
    ("TrainController", "Attempting to start training worker group of size 2 with the following resources", False),
    ("SplitCoordinator", "Starting execution of Dataset train_0. Full logs are in /tmp/ray/session/logs/ray-data", False),
    ("PlacementGroupCleaner", "Failed to query Ray Train Controller actor state. State API may be temporarily", False),
    ("TrainController", "RuntimeError: injected fault at step 7", True),
    ("", "WARNING: the node 127.0.0.3 died", True),
])
def test_what_reaches_the_terminal(process: str, line: str, want: bool) -> None:
    assert shown(process, line) is want


def test_a_progress_line_shows_its_last_redraw_without_what_ray_wrote_after_it() -> None:
    assert last_redraw("\rtrain gan:  12%| 4/32\rtrain gan:  50%| 16/32\r") == "train gan:  50%| 16/32"
    assert last_redraw("plain line") == "plain line"
    printed: list[dict] = []
    StreamRouter(io.StringIO(), printed.append)(batch(
        "RayTrainWorker", "\rtrain dcgan:  50%| 936/1872 [01:14<01:13]    Checkpoint successfully created at: /tmp/c",
        "Wrapping provided model in DistributedDataParallel."))
    assert printed[0]["lines"] == ["train dcgan:  50%| 936/1872 [01:14<01:13]"]


def batch(process: str, *lines: str, pid: int = 7) -> dict:
    return {"actor_name": process, "pid": pid, "ip": "127.0.0.2", "lines": list(lines), "is_err": False}


def test_every_line_goes_to_the_log_and_only_the_shown_ones_to_the_printer() -> None:
    log, printed = io.StringIO(), []
    router = StreamRouter(log, printed.append)
    router(batch("RayTrainWorker", "Checkpoint successfully created at: /tmp/c", "train gan: 100%| 32/32"))
    router(batch("SplitCoordinator", "Execution plan of Dataset train_0", pid=9))
    assert [b["lines"] for b in printed] == [["train gan: 100%| 32/32"]]
    assert printed[0]["actor_name"] == "RayTrainWorker"  # Ray's printer still gets who wrote it
    assert log.getvalue().splitlines() == [
        "(RayTrainWorker pid=7, ip=127.0.0.2) Checkpoint successfully created at: /tmp/c",
        "(RayTrainWorker pid=7, ip=127.0.0.2) train gan: 100%| 32/32",
        "(SplitCoordinator pid=9, ip=127.0.0.2) Execution plan of Dataset train_0"]


def test_a_traceback_is_shown_whole_from_any_process() -> None:
    printed: list[dict] = []
    router = StreamRouter(io.StringIO(), printed.append)
    router(batch("TrainController", "Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                 "    raise ValueError('NaN loss')"))
    router(batch("TrainController", "ValueError: NaN loss", "Requesting resources: {'CPU': 1.0} * 2"))
    assert [line for b in printed for line in b["lines"]] == [
        "Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "    raise ValueError('NaN loss')",
        "ValueError: NaN loss"]  # and the routine line after it is not


def test_verbose_shows_everything() -> None:
    printed: list[dict] = []
    StreamRouter(io.StringIO(), printed.append, show_all=True)(batch("SplitCoordinator", "Execution plan of Dataset x"))
    assert printed[0]["lines"] == ["Execution plan of Dataset x"]


def test_stage_labels_are_dvc_stage_names() -> None:
    assert stage_label(["/p/pipelines/train.py", "--model", "gan"]) == "train@gan"
    assert stage_label(["/p/pipelines/fetch.py"]) == "fetch"


def test_stage_times_are_appended_and_read_back_since_a_moment(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "stages.jsonl"
    record_stage_time("fetch", 100.0, 1.5, True, str(path))
    record_stage_time("train@gan", 200.0, 61.25, False, str(path))
    with path.open("a") as f:
        f.write('{"stage": "cut sho')  # a stage killed while writing its record
    assert [r["stage"] for r in stage_times(path, since=150)] == ["train@gan"]
    lines = format_times(stage_times(path, since=0), wall_seconds=70)
    assert lines[0] == "stages (2 ran, 63 s in stages, 70 s wall clock):"
    assert lines[2].split() == ["train@gan", "61.2", "s", "FAILED"]
    assert json.loads(path.read_text().splitlines()[0]) == {"stage": "fetch", "started": 100.0, "seconds": 1.5, "ok": True}
    assert format_times([], None) == ["stages: none ran (everything was up to date)"]


#: A stage's last lines: an atexit handler, unflushed output, a module-level object whose ``__del__``
#: runs only in the interpreter's teardown, and (``thread``) a non-daemon thread still working.
EXIT_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from pipelines.common import exit_without_teardown
out = Path(sys.argv[1])
class FreedInTeardown:
    def __del__(self):
        (out / "teardown").write_text("ran")
kept = FreedInTeardown()
atexit.register(lambda: (out / "atexit").write_text("ran"))
sys.stdout.write("no newline, not flushed")
if sys.argv[2] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
exit_without_teardown(3)
"""


@pytest.mark.parametrize("case", ["alone", "thread"])
def test_a_stage_exits_with_every_atexit_handler_and_its_output_but_no_teardown(tmp_path: Path, case: str) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), case], cwd=root, capture_output=True, check=False,
                          text=True, timeout=60, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline, not flushed"
    assert (tmp_path / "atexit").read_text() == "ran"
    written = sorted(p.name for p in tmp_path.iterdir())
    if case == "alone":  # the interpreter's teardown is skipped: no module object is freed one by one
        assert written == ["atexit"], written
    else:  # a non-daemon thread is waited for, as a normal exit does (then the normal teardown runs)
        assert written == ["atexit", "teardown", "thread"], written
