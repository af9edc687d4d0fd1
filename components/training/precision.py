"""Which float precision a run trains in, decided where it trains (in the worker, on its device).

``precision: auto`` (the default) means bf16 autocast where the device computes bf16 natively and
fp32 elsewhere: a CPU with AVX512-BF16 or AMX-BF16 (Linux: the ``avx512_bf16`` / ``amx_bf16`` flags
of ``/proc/cpuinfo``), a GPU for which ``torch.cuda.is_bf16_supported()``. Elsewhere bf16 is
emulated and slower than fp32, so an explicit ``precision: bf16`` there is an error, raised before
training starts, not a silently slow run.

``GENMODELS_CPU_BF16=0`` or ``=1`` overrides what the CPU is taken to have (an environment
variable rather than a function to patch: it reaches Ray workers and stage subprocesses too, so
a test or a user can force fp32 on a bf16 CPU, e.g. to reproduce an fp32 result bit for bit).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

CPU_BF16_ENV = "GENMODELS_CPU_BF16"
#: /proc/cpuinfo flags of the instruction sets that compute bf16 natively
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")

Precision = Literal["fp32", "bf16"]


class PrecisionError(RuntimeError):
    """``precision: bf16`` asked for on a device without native bf16."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``GENMODELS_CPU_BF16=0|1`` overrides the answer)."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override:
        if override not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={override!r}: expected 0 or 1")
        return override == "1"
    try:
        text = CPUINFO.read_text()
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """The precision a run on ``device`` trains in.

    Args:
        requested: the config's ``auto``, ``fp32`` or ``bf16``.
        device: where the model trains.

    Returns:
        ``fp32`` or ``bf16``.

    Raises:
        PrecisionError: ``bf16`` requested on a CPU or GPU without native bf16.
    """
    device = torch.device(device)
    if requested == "fp32":
        return "fp32"
    if requested not in ("auto", "bf16"):
        raise ValueError(f"precision {requested!r}: expected auto, fp32 or bf16")
    if device.type == "cpu":
        native, missing = cpu_has_bf16(), (f"this CPU has neither AVX512-BF16 nor AMX-BF16 (no {' or '.join(CPU_BF16_FLAGS)} "
                                           f"flag in {CPUINFO}; {CPU_BF16_ENV} overrides)")
    elif device.type == "cuda":
        native, missing = torch.cuda.is_bf16_supported(), f"GPU {torch.cuda.get_device_name(device)} has no native bf16"
    else:  # other accelerators: auto stays safe, an explicit bf16 is the user's call
        native, missing = requested == "bf16", ""
    if native:
        return "bf16"
    if requested == "bf16":
        raise PrecisionError(f"precision: bf16 asked for, but {missing}: bf16 would be emulated, slower than fp32. "
                             "Set precision: auto (bf16 where the device has it) or fp32.")
    return "fp32"


def precision_reason(requested: str, used: Precision, device: torch.device | str) -> str:
    """Why a run trains in ``used``, in a few words for the stage's output.

    On a CPU without bf16 the default trains in fp32, ~1.3-1.5x slower a step: the first thing a
    reader of a slow run wants to know is that the CPU, not the config, chose it.
    """
    if requested != "auto":
        return f"asked: {requested}"
    if torch.device(device).type != "cpu":
        return f"auto: {'native' if used == 'bf16' else 'no native'} bf16 on this device"
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override:
        return f"auto, {CPU_BF16_ENV}={override}"
    if used == "bf16":
        return "auto: this CPU computes bf16 natively"
    return f"auto: no {' or '.join(CPU_BF16_FLAGS)} on this CPU"
