"""The batch inversion engine behind ``infer.py``: image files in, W+ latents (and images) out.

Pipeline: :func:`collect_jobs` decides what to read and where each result goes; a DataLoader
decodes images in worker processes with bounded prefetch (memory does not grow with the number
of inputs); the encoder runs under ``torch.inference_mode`` (optionally refined, optionally decoded
for previews); each result is written atomically and then recorded in ``manifest.jsonl``. A bad
image becomes a ``failed`` manifest line and the run goes on.

Output naming: an input's path relative to the deepest folder holding all inputs (a single input
folder: that folder), minus its extension, is its output stem (``<out>/<rel>/<stem>.pt``). Inputs
whose stems collide keep their extension (``a.jpg.pt``, ``a.png.pt``); any clash left after that
gets ``-2``, ``-3`` ... in input order.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from psp.cli import UsageError
from psp.config import ConfigError, InferConfig, model_config_to_dict
from psp.images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_rgb, to_tensor
from psp.model import PSP
from psp.nets.fuse import optimize_for_inference
from psp.outputs import Manifest, read_manifest, save_latent, save_png

# A photo whose shorter side is below this is too small to say anything about a face.
MIN_IMAGE_SIDE = 32

# Threads writing latents and PNGs (file I/O, fsync and PNG encoding release the GIL).
WRITER_THREADS = 4

LIST_SUFFIXES = (".txt", ".lst")
IMAGES = ("images", tuple(sorted(IMAGE_EXTENSIONS)))


@dataclass(frozen=True)
class Job:
    """One input file and its output stem: a POSIX path relative to ``--out``, without suffix."""

    source: Path
    stem: str


@dataclass
class Summary:
    """What a run did (``skipped``: finished by an earlier run, kept by ``--resume``)."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def line(self, verb: str) -> str:
        rate = self.ok / self.seconds if self.seconds > 0 else 0.0
        return (f"{verb} {self.ok}, failed {self.failed}, skipped {self.skipped} "
                f"in {self.seconds:.1f} s ({rate:.2f} images/s)")


# ----------------------------------------------------------------------------------------------
# Inputs and output names


def read_list_file(path: Path) -> list[Path]:
    """Paths listed in a text file, one per line; blank lines and ``#`` lines are ignored.

    Relative entries are relative to the list file's folder. Entries are not checked here: a
    missing one becomes a ``failed`` manifest line, like any unreadable image.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"list file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"list file '{path}' cannot be read as UTF-8 text ({exc})") from None
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line).expanduser()
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    return entries


def collect_jobs(specs: Sequence[str], list_folder: Callable[[Path], list[Path]] = list_images,
                 what: tuple[str, Sequence[str]] = IMAGES) -> tuple[list[Job], list[Path]]:
    """Expand command-line inputs into jobs, and return the folders among them too.

    ``specs``: files, folders (every file ``list_folder`` finds, recursively) and ``@LIST`` text
    files (:func:`read_list_file`); ``what``: (name, suffixes) of the files ``list_folder`` finds. The same file named twice is inverted once. Raises UsageError
    for a path that does not exist, a ``.txt`` given without ``@``, or no input file at all.
    """
    files: list[Path] = []
    roots: list[Path] = []  # folders the output tree mirrors
    folders: list[Path] = []
    for spec in specs:
        if spec.startswith("@"):
            listed = read_list_file(Path(spec[1:]))
            files += listed
            roots += [p.parent for p in listed]
            continue
        path = Path(spec)
        if path.is_dir():
            files += list_folder(path)
            roots.append(path)
            folders.append(path)
        elif path.is_file():
            if path.suffix.lower() in LIST_SUFFIXES:
                raise UsageError(f"input '{spec}' looks like a list of paths; write @{spec} to read it as one")
            files.append(path)
            roots.append(path.parent)
        elif path.exists():
            raise UsageError(f"input '{spec}' is neither a file nor a folder")
        else:
            raise UsageError(f"input '{spec}' does not exist")
    if not files:
        raise UsageError(f"no {what[0]} found in {', '.join(specs)} (looked for {', '.join(what[1])})")
    return plan_jobs(files, roots), folders


def plan_jobs(files: Sequence[Path], roots: Sequence[Path]) -> list[Job]:
    """Give each distinct file a unique output stem (rule in the module docstring)."""
    base = Path(os.path.commonpath([os.path.abspath(r) for r in roots]))
    unique: dict[str, Path] = {}
    for f in files:
        unique.setdefault(os.path.normcase(os.path.abspath(f)), f)
    rels = [Path(key).relative_to(base).as_posix() for key in unique]
    stems = [_without_suffix(r) for r in rels]
    # casefold: outputs must not collide on case-insensitive file systems either.
    counts = Counter(s.casefold() for s in stems)
    names = [rel if counts[stem.casefold()] > 1 else stem for rel, stem in zip(rels, stems)]
    used: set[str] = set()
    jobs = []
    for source, name in zip(unique.values(), names):
        candidate, n = name, 1
        while candidate.casefold() in used:
            n += 1
            candidate = f"{name}-{n}"
        used.add(candidate.casefold())
        jobs.append(Job(source, candidate))
    return jobs


def _without_suffix(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    stem = Path(name).stem
    return f"{head}/{stem}" if head else stem


def check_output_folder(out: Path, input_folders: Sequence[Path]) -> None:
    """Refuse an ``--out`` that is a file, not writable, or inside an input folder (outputs would
    become inputs)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out '{out}': cannot write to '{existing}' (permission denied)")
    target = out.resolve()
    for folder in input_folders:
        if target.is_relative_to(folder.resolve()):
            raise UsageError(f"--out '{out}' is inside the input folder '{folder}'; choose a folder "
                             "outside it, or its outputs would be read as inputs")


def finished_outputs(out: Path, resume: bool, checkpoint_sha256: str) -> set[str]:
    """Outputs (relative to ``out``) that earlier runs finished, as their latest manifest line says.

    Without ``resume`` an existing manifest is a UsageError (nothing is overwritten by accident);
    so is resuming with a different checkpoint than the one the folder was written with.
    """
    path = out / Manifest.NAME
    if not path.is_file():
        return set()
    if not resume:
        raise UsageError(f"'{out}' already holds {Manifest.NAME} from an earlier run; pass --resume to "
                         "continue it, or choose another --out")
    done: set[str] = set()
    for record in read_manifest(path):
        if record.get("type") == "run" and record.get("checkpoint_sha256") != checkpoint_sha256:
            raise UsageError(f"'{out}' was written with checkpoint sha256 "
                             f"{str(record.get('checkpoint_sha256'))[:12]}..., this run uses "
                             f"{checkpoint_sha256[:12]}...; resume with that checkpoint or choose another --out")
        output = record.get("output")
        if record.get("type") == "input" and isinstance(output, str):
            if record.get("status") in ("ok", "skipped"):
                done.add(output)
            else:
                done.discard(output)
    return done


# ----------------------------------------------------------------------------------------------
# Devices and precision


def resolve_device(name: str) -> torch.device:
    """``infer.device`` (auto, cpu, cuda, cuda:N) as a torch.device; UsageError if unavailable."""
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise UsageError(f"infer.device is {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(f"infer.device is {name!r} but no CUDA device is available; use cpu or auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(f"infer.device is {name!r} but only {torch.cuda.device_count()} CUDA "
                         f"device(s) exist (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """A factory of autocast contexts for ``infer.precision`` on ``device``.

    fp32: no autocast. bf16: CUDA (where supported) and CPU (fast on CPUs with AMX/AVX512-BF16).
    fp16: CUDA only; CPU float16 kernels are slow and not worth offering.
    """
    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("infer.precision=fp16 needs a CUDA device; on CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"infer.precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                         "use fp16 or fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return lambda: torch.autocast(device.type, dtype=dtype)


def prepare_for_inference(model: PSP) -> PSP:
    """Freeze ``model`` and rewrite its encoder for inference, in place (`psp.nets.fuse`: BN folded
    into the convolutions, the style blocks of each pyramid level merged, NHWC weights, which
    oneDNN and cuDNN run fastest). Codes equal the plain model's up to float rounding (~1e-6)."""
    optimize_for_inference(model.encoder)
    return model.requires_grad_(False).eval()


def load_model(path: Path, device: torch.device) -> PSP:
    """``PSP.from_checkpoint``, prepared for inference; a missing or foreign file is a UsageError."""
    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' does not exist; pass --checkpoint PATH (the released "
                         "FFHQ model: python -m psp.fetch psp_ffhq_encode.pt)")
    try:
        model = PSP.from_checkpoint(path, device=device)
    except ConfigError:
        raise
    except OSError as exc:
        raise UsageError(f"checkpoint '{path}' cannot be read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if str(path) in reason else f"{path}: "
        raise UsageError(f"--checkpoint is not a usable pSp model file: {where}{reason}") from None
    return prepare_for_inference(model)


# ----------------------------------------------------------------------------------------------
# Streaming


class _Batch(NamedTuple):
    indices: list[int]              # job indices of the decoded images, in order
    images: Optional[torch.Tensor]  # [len(indices), 3, S, S] in [-1, 1]; None if all failed
    failures: list[tuple[int, str]]  # (job index, reason)


class _PathTable:
    """Paths packed into two arrays. Forked DataLoader workers read a list of Python objects
    through reference counts, which copies every page it touches into each worker (PyTorch issue
    13246); a packed table stays shared, so workers do not grow with the number of inputs."""

    def __init__(self, paths: Sequence[Path]):
        encoded = [os.fsencode(p) for p in paths]
        self.offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Path:
        return Path(os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()))


class _ImageFiles(Dataset):
    """Decodes one job's image in a DataLoader worker; a bad file yields its reason, not an exception."""

    def __init__(self, paths: Sequence[Path], size: int, align: bool):
        self.paths, self.size, self.align = _PathTable(paths), size, align
        self.errors: tuple[type[Exception], ...] = (ImageLoadError,)
        if align:
            from psp.align import AlignError  # only --align needs the face-alignment module
            self.errors += (AlignError,)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], Optional[str]]:
        try:
            img = load_rgb(self.paths[i], min_size=MIN_IMAGE_SIDE)
            if self.align:
                from psp.align import align_face
                img = align_face(img, output_size=self.size, source="the image")  # the path is logged already
            return i, to_tensor(img, self.size), None
        except self.errors as exc:
            return i, None, getattr(exc, "reason", None) or str(exc)


def _collate(items: list[tuple[int, Optional[torch.Tensor], Optional[str]]]) -> _Batch:
    decoded = [(i, x) for i, x, err in items if err is None]
    return _Batch(indices=[i for i, _ in decoded],
                  images=torch.stack([x for _, x in decoded]) if decoded else None,
                  failures=[(i, err) for i, _, err in items if err is not None])


def stream_images(paths: list[Path], size: int, cfg: InferConfig, pin_memory: bool) -> DataLoader:
    """Batches of decoded images in input order; at most 2 batches per worker are in flight."""
    return DataLoader(_ImageFiles(paths, size, cfg.align), batch_size=cfg.batch_size, shuffle=False,
                      drop_last=False, num_workers=cfg.num_workers, collate_fn=_collate,
                      pin_memory=pin_memory, prefetch_factor=2 if cfg.num_workers > 0 else None)


def progress_bar(total: int, desc: str, quiet: bool) -> tqdm:
    """A tqdm bar on stderr (images/s); off with ``quiet`` or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Inversion:
    """One inversion run into ``out`` with a loaded model (see :meth:`run`)."""

    model: PSP
    cfg: InferConfig
    out: Path
    device: torch.device
    checkpoint: Path
    checkpoint_sha256: str
    quiet: bool = False
    lpips_net: str = "alex"                # refinement's LPIPS (config loss.lpips_net)
    lpips_weights: Optional[str] = None    # its backbone file for offline machines (loss.lpips_weights)

    def __post_init__(self) -> None:
        self.autocast = autocast_for(self.device, self.cfg.precision)
        self.save_images = self.cfg.save_images or self.cfg.side_by_side
        self.lpips: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def prepare(self) -> None:
        """Build what ``align`` and ``refine_steps`` need now, so a missing piece is a UsageError
        before anything is written rather than a failure on every image."""
        try:
            if self.cfg.align:
                from psp.align import face_detector
                face_detector()
            if self.cfg.refine_steps > 0 and self.cfg.refine_lpips > 0:
                from psp.losses import LPIPSLoss, LPIPSWeightsError
                try:
                    self.lpips = LPIPSLoss(self.lpips_net, self.lpips_weights).to(self.device)
                except LPIPSWeightsError as exc:
                    raise UsageError(f"--refine-steps: {exc}") from None
        except ImportError as exc:
            feature = "--align" if self.cfg.align else "--refine-steps"
            raise UsageError(f"{feature} is unavailable here: {exc}") from None

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
        batches = iter(stream_images([job.source for job in pending], self.model.input_size, self.cfg,
                                     pin_memory=self.device.type == "cuda"))
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            manifest = Manifest(self.out)
        except BlockingIOError:
            raise UsageError(f"another infer.py run is writing to '{self.out}'; wait for it or choose "
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

    def _submit(self, batch: _Batch, jobs: list[Job], writer: ThreadPoolExecutor,
                bar: tqdm) -> tuple[list[Future], list[dict[str, Any]]]:
        """Encode one batch and queue its files: (pending writes, manifest records in job order)."""
        records: dict[int, dict[str, Any]] = {}
        writes: list[Future] = []
        if batch.images is not None:
            x = batch.images.to(self.device, non_blocking=True)
            codes = self.encode(x)
            previews = self.previews(x, codes) if self.save_images else None
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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B,3,S,S] in [-1,1] on the device -> W+ codes [B,n_styles,512] float32 on the CPU."""
        x = x.contiguous(memory_format=torch.channels_last)  # the layout of the encoder's weights
        with torch.inference_mode(), self.autocast():
            codes = self.model.encode(x)
        if self.cfg.refine_steps > 0:
            from psp.refine import refine_codes  # only --refine-steps needs the optimiser
            # In fp32 and outside inference mode: refine_codes runs autograd on its own clones.
            codes = refine_codes(self.model, x, codes.float(), self.cfg.refine_steps, lr=self.cfg.refine_lr,
                                 l2_weight=self.cfg.refine_l2, lpips_weight=self.cfg.refine_lpips,
                                 lpips=self.lpips)
        return codes.float().cpu()

    def previews(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructions [B,3,H,W] on the CPU (``side_by_side``: input | reconstruction)."""
        with torch.inference_mode(), self.autocast():
            images = self.model.decode(codes.to(self.device), resize=True).float()
            if self.cfg.side_by_side:
                shown = x.float()
                if shown.shape[-2:] != images.shape[-2:]:
                    shown = F.interpolate(shown, size=images.shape[-2:], mode="bilinear",
                                          align_corners=False, antialias=True)
                images = torch.cat([shown, images], dim=-1)
        return images.cpu()

    def _latent_meta(self, job: Job) -> dict[str, Any]:
        return {"source": str(job.source), "checkpoint": str(self.checkpoint.resolve()),
                "checkpoint_sha256": self.checkpoint_sha256, "n_styles": self.model.n_styles,
                "input_size": self.model.input_size, "generator_size": self.model.config.generator.size,
                "refine_steps": self.cfg.refine_steps, "align": self.cfg.align}

    def _record(self, job: Job, status: str, error: Optional[str] = None) -> dict[str, Any]:
        latent, image = self.output_paths(job)
        return {"type": "input", "input": str(job.source), "output": latent, "image": image,
                "status": status, "error": error,
                "checkpoint_sha256": self.checkpoint_sha256}

    def _header(self, n_inputs: int) -> dict[str, Any]:
        return {"type": "run", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "checkpoint": str(self.checkpoint.resolve()), "checkpoint_sha256": self.checkpoint_sha256,
                "inputs": n_inputs, "device": str(self.device), "infer": dataclasses.asdict(self.cfg),
                "model": model_config_to_dict(self.model.config)}
