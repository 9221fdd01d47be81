"""What an inference command reads and where each result goes: the jobs of a run, and resuming.

Output naming: an input's path relative to the deepest folder holding all inputs (a single input
folder: that folder), minus its extension, is its output stem (``<out>/<rel>/<stem>.pt``). Inputs
whose stems collide keep their extension (``a.jpg.pt``, ``a.png.pt``); any clash left after that
gets ``-2``, ``-3`` ... in input order.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from psp.errors import InputError
from psp.inference.outputs import Manifest
from psp.inference.shards import Shard, history, merge_lock
from psp.io.images import IMAGE_EXTENSIONS, list_images

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


def read_list_file(path: Path) -> list[Path]:
    """Paths listed in a text file, one per line; blank lines and ``#`` lines are ignored.

    Relative entries are relative to the list file's folder. Entries are not checked here: a
    missing one becomes a ``failed`` manifest line, like any unreadable image.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"list file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"list file '{path}' cannot be read as UTF-8 text ({exc})") from None
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
    files (:func:`read_list_file`); ``what``: (name, suffixes) of the files ``list_folder`` finds. The same file named twice is inverted once. Raises InputError
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
                raise InputError(f"input '{spec}' looks like a list of paths; write @{spec} to read it as one")
            files.append(path)
            roots.append(path.parent)
        elif path.exists():
            raise InputError(f"input '{spec}' is neither a file nor a folder")
        else:
            raise InputError(f"input '{spec}' does not exist")
    if not files:
        raise InputError(f"no {what[0]} found in {', '.join(specs)} (looked for {', '.join(what[1])})")
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
        raise InputError(f"--out '{out}' is a file; give a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out '{out}': cannot write to '{existing}' (permission denied)")
    target = out.resolve()
    for folder in input_folders:
        if target.is_relative_to(folder.resolve()):
            raise InputError(f"--out '{out}' is inside the input folder '{folder}'; choose a folder "
                             "outside it, or its outputs would be read as inputs")


def finished_outputs(out: Path, resume: bool, checkpoint_sha256: str, shard: Shard = Shard(),
                     jobs_sha256: Optional[str] = None) -> set[str]:
    """Outputs (relative to ``out``) that earlier runs finished, as their latest manifest line says
    (in ``manifest.jsonl`` or in any part a sharded run left, whichever shard wrote it).

    Without ``resume`` an earlier run's manifest is a InputError (nothing is overwritten by
    accident); so is resuming with a different checkpoint than the one the folder was written with.
    A shard (``jobs_sha256``: the fingerprint of the full job list) does not count the runs of
    shards with its job list and rank count as earlier: they may be its own launch's other ranks.
    """
    with merge_lock(out, exclusive=False):
        records = list(history(out))
    if not resume:
        ours = {"count": shard.count, "jobs_sha256": jobs_sha256}
        if any(r.get("type") == "run" and not (shard.count > 1 and isinstance(r.get("shard"), dict)
                                               and {k: r["shard"].get(k) for k in ours} == ours)
               for r in records):
            raise InputError(f"'{out}' already holds {Manifest.NAME} from an earlier run; pass --resume to "
                             "continue it, or choose another --out")
        return set()
    done: set[str] = set()
    for record in records:
        if record.get("type") == "run" and record.get("checkpoint_sha256") != checkpoint_sha256:
            raise InputError(f"'{out}' was written with checkpoint sha256 "
                             f"{str(record.get('checkpoint_sha256'))[:12]}..., this run uses "
                             f"{checkpoint_sha256[:12]}...; resume with that checkpoint or choose another --out")
        output = record.get("output")
        if record.get("type") == "input" and isinstance(output, str):
            if record.get("status") in ("ok", "skipped"):
                done.add(output)
            else:
                done.discard(output)
    return done


def progress_bar(total: int, desc: str, quiet: bool) -> tqdm:
    """A tqdm bar on stderr (images/s); off with ``quiet`` or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())
