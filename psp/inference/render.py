"""Saved W+ latents back into images (``infer.py render``), with the generator that made them.

Latent files are read in the main process (they are small); each batch of codes goes through the
engine's decode (the one ``infer.py --save-images`` uses, deterministic noise), so rendering a
latent reproduces its reconstruction; a tuned latent (``infer.py --tune-generator``) is drawn by
its base generator plus the delta file it names. A latent that cannot be read
or does not fit the generator is reported and skipped.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from psp.errors import InputError
from psp.inference.engine import Engine
from psp.inference.jobs import Job, Summary, progress_bar
from psp.inference.outputs import LATENT_SUFFIXES, LatentFileError, latent_delta, load_latent, save_png
from stylegan2.delta import DeltaFileError, apply_delta, load_delta
from stylegan2.fingerprint import generator_sha256

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
    _base_sha256: Optional[str] = field(default=None, init=False, repr=False)
    _last_tuned: Optional[tuple[Path, torch.nn.Module]] = field(default=None, init=False, repr=False)

    def run(self, jobs: list[Job]) -> Summary:
        start = time.perf_counter()
        summary = Summary()
        with progress_bar(len(jobs), "rendering", self.quiet) as bar:
            for first in range(0, len(jobs), self.batch_size):
                chunk = jobs[first:first + self.batch_size]
                # Latents naming the same generator delta (None: the base) decode together.
                groups: dict[Optional[Path], tuple[Optional[torch.nn.Module], list[torch.Tensor], list[Job]]] = {}
                for job in chunk:
                    try:
                        w_plus, delta = self._read(job)
                        generator = self._tuned(delta)
                    except (LatentFileError, DeltaFileError) as exc:
                        named = f"{job.source} names {exc}" if isinstance(exc, DeltaFileError) else exc
                        bar.write(f"failed: {named}", file=sys.stderr)
                        summary.failed += 1
                        continue
                    _, codes, ready = groups.setdefault(delta, (generator, [], []))
                    codes.append(w_plus)
                    ready.append(job)
                for generator, codes, ready in groups.values():
                    images = self.engine.decode(torch.stack(codes), resize=not self.full_resolution,
                                                generator=generator).cpu()
                    for job, image in zip(ready, images):
                        save_png(self.out / f"{job.stem}.png", image)
                    summary.ok += len(ready)
                bar.update(len(chunk))
        summary.seconds = time.perf_counter() - start
        return summary

    def _tuned(self, delta: Optional[Path]) -> Optional[torch.nn.Module]:
        """The generator tuned by the delta file ``delta`` (None: the base, as None). The last one
        is kept: latents of a folder tuned together share their delta."""
        if delta is None:
            return None
        key = delta.resolve()
        if self._last_tuned is None or self._last_tuned[0] != key:
            base = self.engine.model.generator
            if self._base_sha256 is None:
                self._base_sha256 = generator_sha256(base)
            self._last_tuned = (key, apply_delta(base, load_delta(delta), self._base_sha256, source=str(delta)))
        return self._last_tuned[1]

    def _read(self, job: Job) -> tuple[torch.Tensor, Optional[Path]]:
        """One latent file's codes [n_styles, 512], checked against the generator, and the
        generator delta file it names (None: drawn by the base generator)."""
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
        return w_plus, latent_delta(job.source, meta)
