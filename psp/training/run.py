"""Training runs: the Lightning Trainer, loggers and callbacks built from a :class:`Config`.

Run directory (``train.output_dir``)::

    config.yaml              resolved config (written when training starts)
    metrics.jsonl            one JSON object per validation: step + every val loss/metric
    psp.pt                   inference export (PSP.from_checkpoint), refreshed at each validation
    checkpoints/last.ckpt    resumable training state (encoder, optimiser, loops, logger ids)
    checkpoints/best.ckpt    lowest val/loss so far
    images/step_XXXXXX.png   validation grids: source | target | output
    logs/csv|tensorboard/    logger files; wandb/ and wandb_run_id for wandb
"""
from __future__ import annotations

import os
import sys
import uuid
import warnings
from pathlib import Path

import pytorch_lightning as L
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.exceptions import SIGTERMException

from psp.training.callbacks import ImageGrid, InferenceExport, MetricsJournal, ResumeCheckpoint, RunDirectory
from psp.errors import InputError
from psp.config import Config, check_paths, parse_devices, to_yaml
from psp.training.data import PSPDataModule
from psp.training.system import PSPSystem, needs_unused_parameter_search, uses_manual_optimization

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WANDB_ID_FILE = "wandb_run_id"
# 128 + SIGTERM, as a shell reports a process ended by the signal: wrappers (SLURM scripts,
# torchrun restarts) can tell "interrupted, resume me" from "finished" (0).
EXIT_PREEMPTED = 143


def resolve_resume(output_dir: str | Path, resume: str | None) -> str | None:
    """The checkpoint to resume from: ``None``, a path, or ``"auto"``.

    ``auto`` takes the newest of ``checkpoints/last.ckpt`` and Lightning's SLURM requeue
    checkpoints (``checkpoints/hpc_ckpt_N.ckpt``), or starts fresh when there is none.
    Without ``--resume``, an output_dir that already holds a run is refused rather than overwritten.
    """
    ckpt_dir = Path(output_dir) / CHECKPOINT_DIR
    found = [p for p in [ckpt_dir / LAST_CHECKPOINT, *ckpt_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if resume is None:
        if found:
            raise InputError(f"train.output_dir '{output_dir}' already holds a run ({found[0]}); "
                             f"continue it with --resume auto or choose another train.output_dir")
        return None
    if resume == "auto":
        if not found:
            print(f"note: --resume auto: no checkpoint in {ckpt_dir}, starting a new run", file=sys.stderr)
            return None
        return str(max(found, key=lambda p: p.stat().st_mtime))
    if not Path(resume).is_file():
        raise InputError(f"--resume: checkpoint '{resume}' does not exist; give a .ckpt file or 'auto'")
    return resume


class _AppendingWriter(ExperimentWriter):
    """CSV writer that continues an existing metrics.csv (Lightning's deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r") as f:
                header = f.readline().strip()
            self.metrics_keys = header.split(",") if header else []


class ResumedCSVLogger(CSVLogger):
    """CSVLogger for a resumed run: same version directory, rows appended."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def build_logger(config: Config, resuming: bool) -> Logger | bool:
    """The ``log.logger`` backend writing under ``<output_dir>/logs`` (wandb: ``<output_dir>/wandb``).

    Fixed version names (``logs/csv``, ``logs/tensorboard``, the wandb id stored in the run
    directory) make a resumed run continue the same logger run instead of opening a new one.
    """
    out = Path(config.train.output_dir)
    kind = config.log.logger
    if kind == "none":
        return False
    if kind == "csv":
        return (ResumedCSVLogger if resuming else CSVLogger)(out, name="logs", version="csv")
    if kind == "tensorboard":
        return TensorBoardLogger(out, name="logs", version="tensorboard", default_hp_metric=False)
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        # No key: an online run would stop to ask for a login, which hangs a batch job.
        os.environ["WANDB_MODE"] = "offline"
        print(f"note: WANDB_API_KEY is not set; wandb logs offline to {out / 'wandb'} "
              f"(upload later with `wandb sync`)", file=sys.stderr)
    id_file = out / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resuming and id_file.is_file() else uuid.uuid4().hex[:8]
    return WandbLogger(project=config.log.project, name=config.log.run_name or out.name,
                       save_dir=str(out), id=run_id, resume="allow")


def build_callbacks(config: Config, logger: Logger | bool) -> list[L.Callback]:
    out = Path(config.train.output_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    files = {"config.yaml": to_yaml(config)}
    if isinstance(logger, WandbLogger):
        files[WANDB_ID_FILE] = logger.version + "\n"
    return [
        RunDirectory(out, files),
        MetricsJournal(out / "metrics.jsonl"),
        ImageGrid(out / "images"),
        InferenceExport(out / "psp.pt"),
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
        ResumeCheckpoint(ckpt_dir / LAST_CHECKPOINT),  # after ModelCheckpoint: saves its updated state
        # One bar update per step floods batch-job logs; there, update once per log interval.
        TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else config.train.log_every),
    ]


def build_trainer(config: Config, resuming: bool = False) -> L.Trainer:
    """The Trainer for ``config``: step-based (``max_steps``, validation every ``val_every`` steps
    across epoch boundaries), devices/strategy/precision from ``train``, clipping from ``optim``
    (done by the system itself under manual optimisation)."""
    t = config.train
    logger = build_logger(config, resuming)
    strategy = t.strategy
    if strategy in ("ddp", "ddp_spawn") and needs_unused_parameter_search(config):
        strategy = f"{strategy}_find_unused_parameters_true"
    manual = uses_manual_optimization(config)
    return L.Trainer(
        default_root_dir=str(Path(t.output_dir) / CHECKPOINT_DIR),  # where SLURM requeue saves hpc_ckpt_N
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches or 1.0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        accelerator=t.accelerator,
        devices=parse_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=t.precision,
        gradient_clip_val=None if manual else config.optim.grad_clip or None,
        logger=logger,
        callbacks=build_callbacks(config, logger),
    )


def run(config: Config, resume: str | None = None) -> int:
    """Train (or resume) the run described by ``config``; 0 when done, 143 when stopped by SIGTERM."""
    check_paths(config, "train")
    ckpt_path = resolve_resume(config.train.output_dir, resume)
    L.seed_everything(config.train.seed, workers=True)
    # A weights file that does not fit the config raises a CheckpointError (one line, exit 2).
    system = PSPSystem(config)
    data = PSPDataModule(config.data, config.train, config.model.encoder.input_size,
                         generator=system.model.generator, w_avg=system.model.w_avg)
    trainer = build_trainer(config, resuming=ckpt_path is not None)
    # The generator and loss nets are in eval mode on purpose (see PSPSystem.train).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode",
                            module="pytorch_lightning")
    try:
        trainer.fit(system, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        if trainer.is_global_zero:
            last = Path(config.train.output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
            print(f"stopped by SIGTERM at step {trainer.global_step}; saved {last}; "
                  f"continue with --resume auto", file=sys.stderr)
        _finish_wandb_run(EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    _finish_wandb_run(0)
    return 0


def _finish_wandb_run(exit_code: int) -> None:
    """Finish this process's wandb run, if any, so that its summary and history are complete.

    Lightning's WandbLogger leaves this to wandb's exit handler, which was seen giving up (its
    service gone first) on a normal exit and never runs when a DDP rank leaves with ``os._exit``.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
