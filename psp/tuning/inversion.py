"""``infer.py --tune-generator N``: the inversion run, plus pivotal tuning per image or per folder.

Each image is encoded (and refined) as in a plain run; its final codes are the pivots. A group
(one image with ``tune.per=image``; all inputs of one output folder with ``tune.per=folder``) then
gets its own tuned copy of the generator (``psp.tuning.pti``), stored as a compact delta
(``stylegan2.delta``, rank ``tune.rank``) next to the latents:

    per image:  <out>/<stem>.pt  names  <out>/<stem>.delta
    per folder: <out>/<folder>/<stem>.pt  name  <out>/<folder>/tuned-generator.delta

The latent records the delta's file name (``generator_delta``; it sits in the latent's folder), so
``infer.py render``, ``psp edit`` and ``PSP.decode`` draw it with the tuned generator. Previews
(``--save-images``) are drawn with the saved delta, so they are what a render gives.

A folder's outputs are written together once its last image is encoded (its images wait in
memory: about 0.8 MB each at 256 px). ``--resume`` treats a folder as finished only when all its
outputs are, and otherwise tunes it again from all its images.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from psp.config import LPIPSConfig, TuneConfig
from psp.inference.invert import Inversion
from psp.inference.jobs import Job
from psp.inference.outputs import DELTA_KEY, save_latent, save_png
from psp.inference.stream import Batch
from psp.tuning.files import save_delta
from psp.tuning.pti import tune
from stylegan2.delta import DELTA_SUFFIX, apply_delta, compress_delta

# The delta file of a folder group (a name no image stem can take: stems never end in .delta).
FOLDER_DELTA = "tuned-generator" + DELTA_SUFFIX


def build_tuning_lpips(tune_cfg: TuneConfig, lpips_cfg: LPIPSConfig, device: torch.device,
                       shared: Optional[Callable] = None) -> Optional[Callable]:
    """The LPIPS distance tuning needs (None when ``tune.lpips`` is 0), built now so missing weights
    stop the command before any work; ``shared``: one already built (refinement's) to reuse."""
    if tune_cfg.steps == 0 or tune_cfg.lpips == 0:
        return None
    if shared is not None:
        return shared
    from psp.models.lpips import LPIPSLoss, LPIPSWeightsError

    try:
        return LPIPSLoss(lpips_cfg.net, lpips_cfg.weights).to(device)
    except LPIPSWeightsError as exc:
        raise LPIPSWeightsError(f"{exc}; or tune on pixels alone with tune.lpips=0") from None


@dataclass
class TunedInversion(Inversion):
    """An :class:`~psp.inference.invert.Inversion` that also tunes the generator (``tune``)."""

    tune: TuneConfig = field(default_factory=TuneConfig)
    lpips: Optional[Callable] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._members: dict[str, list[Job]] = {}
        self._waiting: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._left: dict[str, set[int]] = {}

    def prepare(self, lpips_cfg: LPIPSConfig) -> None:
        super().prepare(lpips_cfg)
        self.lpips = self.lpips or build_tuning_lpips(self.tune, lpips_cfg, self.engine.device, self.engine.lpips)

    def group_of(self, job: Job) -> str:
        """The group key of a job: its own stem, or its output folder (POSIX, relative to ``out``)."""
        return job.stem if self.tune.per == "image" else PurePosixPath(job.stem).parent.as_posix()

    def shard_group(self) -> Optional[Callable[[Job], str]]:
        # A folder's delta is tuned on all of its images: the folder stays on one shard.
        return self.group_of if self.tune.per == "folder" else None

    def delta_name(self, group: str) -> str:
        """The delta file of a group, relative to ``out``."""
        if self.tune.per == "image":
            return group + DELTA_SUFFIX
        return FOLDER_DELTA if group == "." else f"{group}/{FOLDER_DELTA}"

    def run(self, jobs: list[Job], done: set[str]):
        self._members, self._waiting, self._left = {}, {}, {}
        for job in jobs:
            self._members.setdefault(self.group_of(job), []).append(job)
        return super().run(jobs, done)

    def is_finished(self, job: Job, done: set[str]) -> bool:
        # One shared delta: a folder with an unfinished member is tuned again as a whole.
        group = self.group_of(job)
        return ((self.out / self.delta_name(group)).is_file()
                and all(super(TunedInversion, self).is_finished(j, done) for j in self._members[group]))

    def _submit(self, batch: Batch, jobs: list[Job], writer: ThreadPoolExecutor,
                bar: tqdm) -> tuple[list[Future], list[dict[str, Any]]]:
        """Encode one batch; tune and queue the files of every group it completes."""
        if not self._left:
            for i, job in enumerate(jobs):
                self._left.setdefault(self.group_of(job), set()).add(i)
        records: list[dict[str, Any]] = []
        writes: list[Future] = []
        complete: list[str] = []
        if batch.images is not None:
            x = batch.images[:, 0].to(self.engine.device, non_blocking=True)
            codes = self.engine.invert(x)
            for k, i in enumerate(batch.indices):
                group = self.group_of(jobs[i])
                self._waiting.setdefault(group, {})[i] = (x[k], codes[k])
        for i, reason in batch.failures:
            bar.write(f"failed: {jobs[i].source}: {reason}", file=sys.stderr)
            records.append(self._record(jobs[i], "failed", reason))
        for i in [*batch.indices, *(i for i, _ in batch.failures)]:
            group = self.group_of(jobs[i])
            self._left[group].discard(i)
            if not self._left[group] and group not in complete:
                complete.append(group)
        for group in complete:
            waiting = self._waiting.pop(group, {})
            if waiting:
                group_writes, group_records = self._tune_group(group, waiting, jobs, writer)
                writes += group_writes
                records += group_records
        return writes, records

    def _tune_group(self, group: str, waiting: dict[int, tuple[torch.Tensor, torch.Tensor]], jobs: list[Job],
                    writer: ThreadPoolExecutor) -> tuple[list[Future], list[dict[str, Any]]]:
        """Tune the generator on a group's images, save its delta and queue its latents and previews."""
        order = sorted(waiting)
        x = torch.stack([waiting[i][0] for i in order])
        codes = torch.stack([waiting[i][1] for i in order])
        start = time.perf_counter()
        base = self.model.generator
        tuning = tune(base, x, codes, self.tune, self.lpips, self.model.w_avg, batch_size=self.cfg.batch_size)
        delta = compress_delta(base, tuning.generator, self.tune.rank, self.generator_sha256,
                               meta={"tune": dataclasses.asdict(self.tune), "steps_run": tuning.steps,
                                     "images": [str(jobs[i].source) for i in order],
                                     "seconds": time.perf_counter() - start})
        name = self.delta_name(group)
        save_delta(self.out / name, delta)  # before the latents that name it
        previews = None
        if self.save_images:
            drawn = apply_delta(base, delta, self.generator_sha256, source=name)
            previews = self.previews(x, codes, generator=drawn)
        codes = codes.cpu()
        writes, records = [], []
        for k, i in enumerate(order):
            latent, image = self.output_paths(jobs[i])
            meta = {**self._latent_meta(jobs[i]), DELTA_KEY: PurePosixPath(name).name,
                    "tune_steps": tuning.steps, "tune_rank": self.tune.rank}
            writes.append(writer.submit(save_latent, self.out / latent, codes[k], meta))
            if previews is not None:
                writes.append(writer.submit(save_png, self.out / image, previews[k]))
            records.append(self._record(jobs[i], "ok"))
        return writes, records

    def _header(self, n_inputs: int) -> dict[str, Any]:
        return {**super()._header(n_inputs), "tune": dataclasses.asdict(self.tune)}
