"""Tune one image and draw it with the full tuned generator and with compact deltas, timed and sized.

``psp evaluate --tune-generator`` and ``bench/bench_pti.py`` measure what tuning gains and what the
compression costs through this one function, so both report the same thing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from psp.config import TuneConfig
from psp.inference.engine import Engine
from psp.tuning.pti import tune
from stylegan2.delta import apply_delta, compress_delta


@dataclass
class TunedImage:
    """One image's tuning: ``full`` [1, 3, S, S] drawn by the tuned generator, ``compact[rank]`` drawn
    by the base plus the rank-``rank`` delta, ``nbytes[rank]`` the delta's tensor bytes,
    ``seconds`` the tuning time and ``compress_seconds[rank]`` the SVD time. ``generator``: the
    tuned generator (kept for locality checks)."""

    full: Tensor
    generator: nn.Module
    seconds: float
    compact: dict[int, Tensor] = field(default_factory=dict)
    nbytes: dict[int, int] = field(default_factory=dict)
    compress_seconds: dict[int, float] = field(default_factory=dict)


def tune_image(engine: Engine, x: Tensor, codes: Tensor, cfg: TuneConfig, ranks: Sequence[int],
               lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
               base_sha256: Optional[str] = None) -> TunedImage:
    """Tune ``engine``'s generator on one image ``x`` [1, 3, S, S] from its ``codes`` [1, n_styles, D]
    and draw it at the encoder's input size, in full and at each of ``ranks`` (0: dense delta)."""
    base = engine.model.generator
    _sync(engine.device)
    start = time.perf_counter()
    tuned = tune(base, x, codes, cfg, lpips, engine.model.w_avg).generator
    _sync(engine.device)
    result = TunedImage(engine.decode(codes, generator=tuned), tuned, time.perf_counter() - start)
    for rank in ranks:
        start = time.perf_counter()
        delta = compress_delta(base, tuned, rank, base_sha256)
        drawn = apply_delta(base, delta, delta.base_sha256)
        result.compress_seconds[rank] = time.perf_counter() - start
        result.compact[rank] = engine.decode(codes, generator=drawn)
        result.nbytes[rank] = delta.nbytes
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
