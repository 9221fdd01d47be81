"""A batch inversion run (``infer.py``): image files in, W+ latents (and images) out, crash-safe.

A DataLoader decodes images in worker processes with bounded prefetch (``psp.inference.stream``);
the engine encodes (and optionally refines and decodes for previews); each result is written
atomically by a few threads while the model works on the next batch, and then recorded in
``manifest.jsonl``. A bad image becomes a ``failed`` manifest line and the run goes on.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from psp.config import InferConfig, LPIPSConfig, model_config_to_dict
from psp.errors import InputError
from psp.inference.engine import Engine
from psp.inference.jobs import Job, Summary, progress_bar
from psp.inference.outputs import Manifest, save_latent, save_png
from psp.inference.stream import Batch, stream_images
from stylegan2.fingerprint import generator_sha256

# Threads writing latents and PNGs (file I/O, fsync and PNG encoding release the GIL).
WRITER_THREADS = 4


@dataclass
class Inversion:
    """One inversion run into ``out`` with a loaded model (see :meth:`run`)."""

    engine: Engine
    cfg: InferConfig
    out: Path
    checkpoint: Path
    checkpoint_sha256: str
    quiet: bool = False

    def __post_init__(self) -> None:
        self.save_images = self.cfg.save_images or self.cfg.side_by_side
        self.model = self.engine.model
        # Latents name the generator they belong to, so editing refuses directions of another one.
        self.generator_sha256 = generator_sha256(self.model.generator)

    def prepare(self, lpips_cfg: LPIPSConfig) -> None:
        """Build what ``align`` and refinement need now, so a missing piece is a one-line error
        before anything is written rather than a failure on every image."""
        try:
            if self.cfg.align:
                from psp.inference.align import face_detector
                face_detector()
            self.engine.prepare(lpips_cfg)
        except ImportError as exc:
            feature = "--align" if self.cfg.align else "--refine-steps"
            raise InputError(f"{feature} is unavailable here: {exc}") from None

    def output_paths(self, job: Job) -> tuple[str, Optional[str]]:
        """The latent file and the PNG (or None) of a job, relative to ``out``."""
        return f"{job.stem}.{self.cfg.format}", (f"{job.stem}.png" if self.save_images else None)

    def is_finished(self, job: Job, done: set[str]) -> bool:
        latent, image = self.output_paths(job)
        return (latent in done and (self.out / latent).is_file()
                and (image is None or (self.out / image).is_file()))

    def run(self, jobs: list[Job], done: set[str]) -> Summary:
        """Invert every job not in ``done`` (from :func:`finished_outputs`), recording each in the manifest.

        Files are written by a few threads while the model works on the next batch; a batch's
        manifest lines are appended once all its files are in place.
        """
        start = time.perf_counter()
        finished = [self.is_finished(job, done) for job in jobs]
        pending = [job for job, skip in zip(jobs, finished) if not skip]
        summary = Summary(skipped=len(jobs) - len(pending))
        # Start the decoding workers first: forked after the manifest is open, they would share
        # its lock and could keep it after this process is killed, blocking --resume.
        batches = iter(stream_images([[job.source for job in pending]], self.model.input_size,
                                     self.cfg.batch_size, self.cfg.num_workers, align=self.cfg.align,
                                     pin_memory=self.engine.device.type == "cuda"))
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            manifest = Manifest(self.out)
        except BlockingIOError:
            raise InputError(f"another infer.py run is writing to '{self.out}'; wait for it or choose "
                             "another --out") from None
        with manifest, ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="infer-write") as writer, \
                progress_bar(len(pending), "inverting", self.quiet) as bar:
            manifest.write([self._header(len(jobs))] + [
                self._record(job, "skipped") for job, skip in zip(jobs, finished) if skip])

            def commit(writes: list[Future], records: list[dict[str, Any]]) -> None:
                for write in writes:
                    write.result()  # re-raises a failed write (disk full, ...)
                manifest.write(records)
                summary.ok += sum(r["status"] == "ok" for r in records)
                summary.failed += sum(r["status"] == "failed" for r in records)
                bar.update(len(records))

            previous = None
            for batch in batches:
                current = self._submit(batch, pending, writer, bar)
                if previous is not None:
                    commit(*previous)
                previous = current
            if previous is not None:
                commit(*previous)
        summary.seconds = time.perf_counter() - start
        return summary

    def _submit(self, batch: Batch, jobs: list[Job], writer: ThreadPoolExecutor,
                bar: tqdm) -> tuple[list[Future], list[dict[str, Any]]]:
        """Encode one batch and queue its files: (pending writes, manifest records in job order)."""
        records: dict[int, dict[str, Any]] = {}
        writes: list[Future] = []
        if batch.images is not None:
            x = batch.images[:, 0].to(self.engine.device, non_blocking=True)
            codes = self.engine.invert(x)
            previews = self.previews(x, codes) if self.save_images else None
            codes = codes.cpu()
            for k, i in enumerate(batch.indices):
                latent, image = self.output_paths(jobs[i])
                writes.append(writer.submit(save_latent, self.out / latent, codes[k], self._latent_meta(jobs[i])))
                if previews is not None:
                    writes.append(writer.submit(save_png, self.out / image, previews[k]))
                records[i] = self._record(jobs[i], "ok")
        for i, reason in batch.failures:
            bar.write(f"failed: {jobs[i].source}: {reason}", file=sys.stderr)
            records[i] = self._record(jobs[i], "failed", reason)
        return writes, [records[i] for i in sorted(records)]

    def previews(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructions [B,3,H,W] on the CPU (``side_by_side``: input | reconstruction)."""
        images = self.engine.decode(codes, resize=True)
        if self.cfg.side_by_side:
            shown = x.float()
            if shown.shape[-2:] != images.shape[-2:]:
                shown = F.interpolate(shown, size=images.shape[-2:], mode="bilinear",
                                      align_corners=False, antialias=True)
            images = torch.cat([shown, images], dim=-1)
        return images.cpu()

    def _latent_meta(self, job: Job) -> dict[str, Any]:
        return {"source": str(job.source), "checkpoint": str(self.checkpoint.resolve()),
                "checkpoint_sha256": self.checkpoint_sha256, "generator_sha256": self.generator_sha256,
                "n_styles": self.model.n_styles,
                "input_size": self.model.input_size, "generator_size": self.model.config.generator.size,
                "refine_steps": self.engine.refine.steps, "align": self.cfg.align,
                "family": self.model.family, "iterations": self.engine.iterations}

    def _record(self, job: Job, status: str, error: Optional[str] = None) -> dict[str, Any]:
        latent, image = self.output_paths(job)
        return {"type": "input", "input": str(job.source), "output": latent, "image": image,
                "status": status, "error": error,
                "checkpoint_sha256": self.checkpoint_sha256}

    def _header(self, n_inputs: int) -> dict[str, Any]:
        return {"type": "run", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "checkpoint": str(self.checkpoint.resolve()), "checkpoint_sha256": self.checkpoint_sha256,
                "inputs": n_inputs, "device": str(self.engine.device), "infer": dataclasses.asdict(self.cfg),
                "refine": dataclasses.asdict(self.engine.refine),
                "family": self.model.family, "iterations": self.engine.iterations,
                "model": model_config_to_dict(self.model.config)}
