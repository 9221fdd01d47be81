"""Helpers shared by the benchmark scripts and the runner (``python -m bench``).

The runner's contract with a script (optional; scripts without it get an adapter in ``bench.run``):
a script may put a list of *figures* into its JSON report, each made by :func:`figure`::

    {"name": "generator/cpu/batch4/default/median_s", "value": 1.93, "unit": "s", "better": "lower"}

``name`` is a stable slash-separated key (the runner compares runs by it), ``better`` says which
direction is an improvement, so ``--compare`` can tell a regression from a gain.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from psp.machine import describe_machine, machine_line  # noqa: E402

__all__ = ["describe_machine", "machine_line", "figure", "sync", "time_call", "median_time", "write_json"]


def figure(name: str, value: float, unit: str, better: str = "lower") -> dict:
    """One comparable number; ``better`` is ``"lower"`` (times, memory) or ``"higher"`` (throughput)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"figure {name}: better must be 'lower' or 'higher', got {better!r}")
    return {"name": name, "value": float(value), "unit": unit, "better": better}


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a wall-clock interval covers the kernels it launched."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(run: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall seconds of one ``run()``, synchronised on CUDA before and after."""
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def median_time(run: Callable[[], object], repeats: int = 3, warmup: int = 1,
                device: torch.device | str = "cpu") -> tuple[float, list[float]]:
    """(median, all) wall seconds of ``repeats`` timed calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        run()
    walls = [time_call(run, device) for _ in range(repeats)]
    return statistics.median(walls), walls


def write_json(path: str | os.PathLike, data: dict, indent: Optional[int] = 2) -> None:
    """Write ``data`` as JSON atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)
