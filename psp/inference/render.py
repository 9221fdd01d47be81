"""Saved W+ latents back into images (``infer.py render``), with the generator that made them.

Latent files are read in the main process (they are small); each batch of codes goes through the
engine's decode (the one ``infer.py --save-images`` uses, deterministic noise), so rendering a
latent reproduces its reconstruction. A latent that cannot be read
or does not fit the generator is reported and skipped.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from psp.errors import InputError
from psp.inference.engine import Engine
from psp.inference.jobs import Job, Summary, progress_bar
from psp.inference.outputs import LATENT_SUFFIXES, LatentFileError, load_latent, save_png

LATENTS = ("latent files", LATENT_SUFFIXES)


def list_latents(root: Path) -> list[Path]:
    """Latent files under ``root``, recursively, sorted by relative path; hidden names skipped."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in LATENT_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def recorded_checkpoint(jobs: list[Job]) -> tuple[Path, str]:
    """The checkpoint (path, sha256) named by the first readable ``.pt`` latent among ``jobs``.

    Raises InputError when no latent names one (``.npy`` files hold no metadata) or the file is gone.
    """
    for job in jobs:
        if job.source.suffix.lower() != ".pt":
            continue
        try:
            _, meta = load_latent(job.source)
        except LatentFileError:
            continue
        if isinstance(meta.get("checkpoint"), str):
            path = Path(meta["checkpoint"])
            if not path.is_file():
                raise InputError(f"{job.source} was made with checkpoint '{path}', which does not exist "
                                 "here; pass --checkpoint PATH")
            return path, str(meta.get("checkpoint_sha256", ""))
    raise InputError("no latent file names the checkpoint it was made with (.npy files hold no "
                     "metadata); pass --checkpoint PATH")


@dataclass
class Render:
    """Render latent files into PNGs under ``out`` (``<stem>.png`` per job).

    ``checkpoint_sha256``: when set, a ``.pt`` latent recorded with another checkpoint is reported
    and skipped (it would render as a different image); None renders everything.
    """

    engine: Engine
    out: Path
    batch_size: int = 4
    full_resolution: bool = False
    checkpoint_sha256: Optional[str] = None
    quiet: bool = False

    def run(self, jobs: list[Job]) -> Summary:
        start = time.perf_counter()
        summary = Summary()
        with progress_bar(len(jobs), "rendering", self.quiet) as bar:
            for first in range(0, len(jobs), self.batch_size):
                chunk = jobs[first:first + self.batch_size]
                codes, ready = [], []
                for job in chunk:
                    try:
                        codes.append(self._read(job))
                        ready.append(job)
                    except LatentFileError as exc:
                        bar.write(f"failed: {exc}", file=sys.stderr)
                        summary.failed += 1
                if ready:
                    images = self.engine.decode(torch.stack(codes), resize=not self.full_resolution).cpu()
                    for job, image in zip(ready, images):
                        save_png(self.out / f"{job.stem}.png", image)
                    summary.ok += len(ready)
                bar.update(len(chunk))
        summary.seconds = time.perf_counter() - start
        return summary

    def _read(self, job: Job) -> torch.Tensor:
        """One latent file's codes [n_styles, 512], checked against the generator."""
        w_plus, meta = load_latent(job.source)
        model = self.engine.model
        expected = (model.n_styles, model.config.generator.style_dim)
        if tuple(w_plus.shape) != expected:
            raise LatentFileError(f"{job.source}: W+ codes of shape {list(w_plus.shape)}, this generator "
                                  f"needs {list(expected)}")
        recorded: Any = meta.get("checkpoint_sha256")
        if self.checkpoint_sha256 and isinstance(recorded, str) and recorded != self.checkpoint_sha256:
            raise LatentFileError(f"{job.source}: made with another checkpoint (sha256 {recorded[:12]}...); "
                                  "render it with --checkpoint")
        return w_plus
