"""Callbacks that keep the run directory up to date; each writes on global rank zero only.

Layout they produce under ``train.output_dir``: ``config.yaml``, ``metrics.jsonl``,
``images/step_XXXXXX.png``, ``psp.pt``, ``checkpoints/last.ckpt``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid, save_image

from psp.io.atomic import atomic_write_text


class RunDirectory(L.Callback):
    """Create the run directory and write small text files (``config.yaml``, ...) at setup."""

    def __init__(self, root: str | Path, files: dict[str, str]) -> None:
        self.root = Path(root)
        self.files = files

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            atomic_write_text(self.root / name, text)


class MetricsJournal(L.Callback):
    """Append one JSON object per validation to ``metrics.jsonl``: ``{"step": N, "<term>": x, ...}``.

    Every ``val/<term>`` metric is written without its prefix. On (re)start, lines past the
    restored step are dropped: they belong to steps the resumed run will redo.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= trainer.global_step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        record = {"step": trainer.global_step}
        record.update({k.removeprefix("val/"): float(v) for k, v in sorted(trainer.callback_metrics.items())
                       if k.startswith("val/")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class ImageGrid(L.Callback):
    """After each validation: a grid of ``source | target | output`` rows (the system's ``preview``;
    ReStyle rows hold the output of every pass) saved as ``images/step_XXXXXX.png`` and sent to the
    TensorBoard or wandb logger if active."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not pl_module.preview:
            return
        # [rows*k, 3, H, W] in [-1, 1] -> one [3, H', W'] image in [0, 1], k columns.
        columns = len(pl_module.preview[0])
        grid = make_grid(torch.cat(pl_module.preview), nrow=columns, padding=2, normalize=True, value_range=(-1, 1))
        self.directory.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.directory / f"step_{trainer.global_step:06d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/preview", grid, trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image("val/preview", [grid], step=trainer.global_step,
                                 caption=["source | target | output"])


class InferenceExport(L.Callback):
    """Refresh ``psp.pt`` (the inference file read by ``PSP.from_checkpoint``) after each validation
    and at the end of training. ``PSP.save`` writes atomically, so a reader never sees half a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._exported_step: int | None = None

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._exported_step == trainer.global_step:
            return
        pl_module.model.save(self.path, embed_generator=True)
        self._exported_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._export(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._export(trainer, pl_module)


class ResumeCheckpoint(Checkpoint):
    """Keep ``checkpoints/last.ckpt`` current: after each validation, at the end of training, and
    when the job gets SIGTERM (pre-emption, ``scancel``, a cluster's time limit).

    Lightning's own SIGTERM handler marks the trainer and ends the loop after the current batch
    with :class:`SIGTERMException` (on every rank under DDP); saving then means ``--resume`` loses
    nothing. (ModelCheckpoint's ``save_last`` is not used: it skips "last" whenever the monitored
    metric did not improve.) As a :class:`Checkpoint`, Lightning runs this after the best-model
    ModelCheckpoint listed before it, so the saved state includes that validation's best score.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._saved_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls; rank zero writes
            self._saved_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
