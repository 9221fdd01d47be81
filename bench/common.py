"""Helpers shared by the benchmark scripts and the runner (``python -m bench``).

The runner's contract with a script (optional; without it ``bench.run.extract_figures`` derives them):
a script may put a list of *figures* into its JSON report, each made by :func:`figure`::

    {"name": "generator/cpu/batch4/default/median_s", "value": 1.93, "unit": "s", "better": "lower"}

``name`` is a stable slash-separated key (the runner compares runs by it), ``better`` says which
direction is an improvement, so ``--compare`` can tell a regression from a gain.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from psp.evaluation.machine import describe_machine, machine_line  # noqa: E402
from psp.io.atomic import atomic_write_text  # noqa: E402

__all__ = ["describe_machine", "machine_line", "figure", "load_reference", "sync", "write_json"]


def figure(name: str, value: float, unit: str, better: str = "lower") -> dict:
    """One comparable number; ``better`` is ``"lower"`` (times, memory) or ``"higher"`` (throughput)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"figure {name}: better must be 'lower' or 'higher', got {better!r}")
    return {"name": name, "value": float(value), "unit": unit, "better": better}


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a wall-clock interval covers the kernels it launched."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def write_json(path: str | os.PathLike, data: dict, indent: Optional[int] = 2) -> None:
    """Write ``data`` as JSON atomically (temp file + rename): a reader never sees half a file."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def load_reference(directory: Path, size: int, channel_multiplier: int = 2) -> torch.nn.Module:
    """rosinality's ``Generator`` from ``directory/model.py`` (a stylegan2-pytorch checkout whose
    ``op`` package runs on the CPU; its ``op`` import is resolved there), for timing only."""
    model_py = Path(directory) / "model.py"
    if not model_py.is_file():
        raise SystemExit(f"--reference: no model.py in {directory}")
    sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location("reference_stylegan2_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Generator(size, 512, 8, channel_multiplier=channel_multiplier)
