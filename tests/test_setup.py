"""`make setup`'s torch switch: which index pip is told to take torch from (the CPU index itself
cannot be reached from CI, so this checks the command line make hands to pip, not the download)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def torch_install_line(*variables: str) -> str:
    """The ``pip install torch...`` line ``make`` would run to create .venv (dry run, forced)."""
    done = subprocess.run(["make", "--no-print-directory", "-n", "-B", "venv", *variables], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if re.search(r"pip install .*\btorch==", line)]
    assert len(lines) == 1, done.stdout
    return lines[0]


def test_the_default_leaves_the_choice_of_torch_build_to_pip() -> None:
    line = torch_install_line()
    assert "--index-url" not in line and "--extra-index-url" not in line


def test_torch_cpu_takes_pytorchs_cpu_index_for_torch_alone() -> None:
    line = torch_install_line("TORCH=cpu")
    assert line.split()[-2:] == ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert re.search(r"torch==\d+\.\d+\.\d+ ", line)  # the same pinned version as the default


@pytest.mark.parametrize("value", ["gpu", "CPU", ""])
def test_an_unknown_torch_build_is_an_error_naming_the_choices(value: str) -> None:
    done = subprocess.run(["make", "-n", "venv", f"TORCH={value}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "use TORCH=default or TORCH=cpu" in done.stderr
