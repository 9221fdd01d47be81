"""Where an inversion's time goes, per stage (``infer.py --profile``), so the bottleneck is visible.

Stages: ``load`` (decoding and resizing, in the DataLoader's worker processes), ``encode`` (host to
device copy, the encoder and any refinement), ``decode`` (reconstructions for ``--save-images``),
``write`` (latent and PNG files, in the writer threads). Each stage's images/s is what it would
sustain alone: images / (its busy seconds / the processes or threads it runs in). The slowest
figure is the bottleneck; ``waited`` is how long the model sat idle for lack of decoded batches.
With profiling on, CUDA work is synchronised after each stage so its time lands in that stage
(which costs a little overlap).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch

STAGES = ("load", "encode", "decode", "write")
R = TypeVar("R")


class StageClock:
    """Busy seconds and image counts per stage; :meth:`add` is thread-safe."""

    def __init__(self, device: torch.device, sync: bool):
        self.device, self.sync = device, sync and device.type == "cuda"
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.images = dict.fromkeys(STAGES, 0)
        self.waited = 0.0  # the model idle, waiting for decoded batches
        self.wall = 0.0    # the whole run
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float, images: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.images[stage] += images

    @contextmanager
    def stage(self, name: str, images: int, device_work: bool = True) -> Iterator[None]:
        """Time the block as ``name`` working on ``images`` images (its device work included when
        profiling on CUDA)."""
        start = time.perf_counter()
        yield
        if self.sync and device_work:
            torch.cuda.synchronize(self.device)
        self.add(name, time.perf_counter() - start, images)

    def timed(self, name: str, images: int, work: Callable[[], R]) -> R:
        """``work()``, timed as ``name`` (for the writer threads)."""
        with self.stage(name, images, device_work=False):
            return work()

    def report(self, workers: int, threads: int) -> str:
        """A few lines: per stage, busy seconds and the images/s it sustains in ``workers``
        processes (load) or ``threads`` threads (write)."""
        parallel = {"load": max(workers, 1), "write": threads}
        total, wall = self.images["encode"], self.wall
        lines = [f"profile: {total} images in {wall:.2f} s ({total / wall if wall > 0 else 0.0:.2f} images/s); "
                 f"the model waited {self.waited:.2f} s for decoded batches"]
        for stage in STAGES:
            seconds, images, n = self.seconds[stage], self.images[stage], parallel.get(stage, 1)
            where = {"load": f"in {n} worker process(es)" if workers else "in the main process",
                     "write": f"in {n} threads"}.get(stage, "on " + str(self.device))
            if images == 0:
                lines.append(f"  {stage:<7} -")
                continue
            rate = images * n / seconds if seconds > 0 else float("inf")
            lines.append(f"  {stage:<7} {seconds:8.2f} s busy {where}: {rate:9.2f} images/s")
        return "\n".join(lines)
