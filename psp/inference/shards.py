"""One inversion split over many processes (torchrun, srun, array jobs), with one manifest at the end.

Every process enumerates the same inputs in the same order (:func:`psp.inference.jobs.collect_jobs`
sorts them) and takes every ``count``-th job from position ``index`` (:meth:`Shard.select`), so each
input belongs to exactly one shard. No process talks to another: all coordination goes through
files under ``<out>/manifest.parts/``:

- ``rank-IIIII-of-NNNNN.jsonl``: the shard's manifest part, the same lines ``manifest.jsonl`` holds
  (a header per run, one line per input), locked by its writer as long as it runs;
- ``rank-IIIII-of-NNNNN.alive``: a heartbeat, a counter the shard rewrites every few seconds;
- ``rank-IIIII-of-NNNNN.done``: the completion marker, written after the part is closed; it names
  the fingerprint of the whole job list, so a marker of another input set never counts.

When a shard finishes it merges every part that no process holds any more into ``manifest.jsonl``
(atomically: a temporary file renamed over it) and deletes those parts; ``psp infer --merge DIR``
does the same after a partial run. Under a launcher (torchrun, srun) rank 0 then waits until every
other rank has left its marker or stopped beating, merges once more and says which inputs, if any,
are missing. Array jobs (``--shard I/N``) never wait (their tasks need not run at the same time):
the shard that completes the set of markers merges last and tidies up.

Resume counts finished inputs, not shards: every shard skips the inputs whose latest record in
``manifest.jsonl`` or any part is ``ok``, whichever shard (of whichever rank count) wrote it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar

from psp.errors import InputError
from psp.inference.outputs import Manifest, read_manifest
from psp.io.atomic import atomic_write_text

PARTS_DIR = "manifest.parts"
MERGE_LOCK = "merge.lock"
_PART = re.compile(r"rank-(\d{5})-of-(\d{5})\.jsonl")
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's share of a run: jobs ``index, index + count, ...`` of the full job list.

    ``launched``: ranks came from a launcher's environment (torchrun or srun), and ``local_rank``
    picks the GPU of the node. ``array``: ``--shard`` was given, so the shards need not run at the
    same time and nobody waits; otherwise a launch's processes run together and rank 0 waits.
    """

    index: int = 0
    count: int = 1
    local_rank: int = 0
    launched: bool = False
    array: bool = False

    @property
    def name(self) -> str:
        return f"rank-{self.index:05d}-of-{self.count:05d}"

    @property
    def waits_for_others(self) -> bool:
        return self.launched and not self.array and self.index == 0

    def select(self, jobs: Sequence[T], group: Optional[Callable[[T], str]] = None) -> list[T]:
        """This shard's jobs, in input order: strided, so every shard gets a mix of the folders; with
        ``group`` (a job's group key), whole groups strided in order of first appearance, so a group
        stays on one shard (one tuned generator per folder is made from all of the folder's images)."""
        if group is None:
            return list(jobs[self.index::self.count])
        order: dict[str, int] = {}
        for job in jobs:
            order.setdefault(group(job), len(order))
        return [job for job in jobs if order[group(job)] % self.count == self.index]


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as (I, N) with 0 <= I < N; InputError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise InputError(f"--shard {text!r}: write I/N with 0 <= I < N (e.g. --shard 0/4 ... --shard 3/4; "
                         "in a SLURM array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(match.group(1)), int(match.group(2))


def _env_int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise InputError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def ranks_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int]:
    """(rank, world size, local rank) of a launcher, as training reads them; (0, 1, 0) without one.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. srun sets SLURM_PROCID and SLURM_LOCALID, and
    SLURM_STEP_NUM_TASKS only inside a job step: a batch script itself also sees SLURM_NTASKS
    (and SLURM_PROCID=0) but is one process, so without a step it counts as no launcher.
    """
    if "WORLD_SIZE" in environ and "RANK" in environ:
        rank, world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
        local = _env_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0
        names = "RANK/WORLD_SIZE"
    elif "SLURM_STEP_NUM_TASKS" in environ and "SLURM_PROCID" in environ:
        rank, world = _env_int(environ, "SLURM_PROCID"), _env_int(environ, "SLURM_STEP_NUM_TASKS")
        local = _env_int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0
        names = "SLURM_PROCID/SLURM_STEP_NUM_TASKS"
    else:
        return 0, 1, 0
    if not 0 <= rank < world:
        raise InputError(f"{names} = {rank}/{world}: the rank must be in 0..{world - 1}")
    return rank, world, local


def current_shard(shard_flag: Optional[str], environ: Mapping[str, str] = os.environ) -> Shard:
    """This process's shard: launcher ranks, ``--shard I/N``, or both (array task I of N, each
    with W ranks: shard ``I * W + rank`` of ``N * W``)."""
    rank, world, local = ranks_from_environment(environ)
    if shard_flag is None:
        return Shard(rank, world, local, launched=world > 1)
    index, count = parse_shard(shard_flag)
    return Shard(index * world + rank, count * world, local, launched=world > 1, array=True)


def device_for(name: str, shard: Shard) -> str:
    """``infer.device`` for this process: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under a
    launcher with more than one rank when CUDA exists (one GPU per rank); anything else is kept."""
    import torch

    if shard.launched and name.strip().lower() in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{shard.local_rank}"
    return name


def jobs_fingerprint(outputs: Sequence[str]) -> str:
    """sha256 of the full list of output names: processes that enumerated different inputs (a
    folder changed between their starts) disagree on it."""
    digest = hashlib.sha256()
    for name in outputs:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# The files of a shard


@dataclass(frozen=True)
class ShardFiles:
    """Where a shard's part, heartbeat and completion marker live under ``out``."""

    out: Path
    shard: Shard

    @property
    def folder(self) -> Path:
        return self.out / PARTS_DIR

    @property
    def part_name(self) -> str:
        """The part's path relative to ``out`` (as :class:`Manifest` takes it)."""
        return f"{PARTS_DIR}/{self.shard.name}.jsonl"

    def path(self, index: int, suffix: str) -> Path:
        return self.folder / f"rank-{index:05d}-of-{self.shard.count:05d}{suffix}"

    def write_done(self, fingerprint: str, counts: dict[str, int]) -> None:
        """The completion marker: written once the part is closed (its last line on disk)."""
        record = {"shard": self.shard.index, "count": self.shard.count, "jobs_sha256": fingerprint, **counts}
        atomic_write_text(self.path(self.shard.index, ".done"), json.dumps(record) + "\n")

    def clear_done(self) -> None:
        """Remove this shard's marker of an earlier run, so nobody takes it for this run's."""
        self.path(self.shard.index, ".done").unlink(missing_ok=True)

    def finished_shards(self, fingerprint: str) -> dict[int, dict[str, Any]]:
        """The markers (index -> record) of this rank count that belong to this job list."""
        found = {}
        for index in range(self.shard.count):
            try:
                record = json.loads(self.path(index, ".done").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("jobs_sha256") == fingerprint:
                found[index] = record
        return found

    def beat(self, index: int) -> Optional[str]:
        """The heartbeat of shard ``index`` (changes while it runs), or None before it started."""
        try:
            return self.path(index, ".alive").read_text(encoding="utf-8")
        except OSError:
            return None


class Heartbeat:
    """A daemon thread rewriting ``path`` with a growing counter every ``interval`` seconds, from
    :meth:`start` to :meth:`stop`. Readers compare contents, not times: clocks of nodes may differ."""

    def __init__(self, path: Path, interval: float):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infer-heartbeat", daemon=True)
        self._label = f"{socket.gethostname()} pid {os.getpid()}"

    def start(self) -> "Heartbeat":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(0)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _write(self, n: int) -> None:
        self.path.write_text(f"{n} {self._label}\n", encoding="utf-8")

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            try:
                self._write(n)
            except OSError:
                pass  # a full or flaky disk: the run itself will report it; a missed beat is harmless


def wait_for_shards(files: ShardFiles, fingerprint: str, timeout: float,
                    poll: float = 0.5) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Wait until every shard of ``files.shard.count`` left its marker or stopped beating.

    A shard counts as stopped when its heartbeat has not changed for ``timeout`` seconds (measured
    on this machine's clock from when the wait began). Returns (markers by index, stopped shards).
    """
    last: dict[int, tuple[Optional[str], float]] = {}
    while True:
        done = files.finished_shards(fingerprint)
        now = time.monotonic()
        stopped = []
        for index in range(files.shard.count):
            if index in done:
                continue
            beat = files.beat(index)
            if index not in last or last[index][0] != beat:
                last[index] = (beat, now)
            elif now - last[index][1] > timeout:
                stopped.append(index)
        if len(done) + len(stopped) == files.shard.count:
            return done, stopped
        time.sleep(poll)


# ----------------------------------------------------------------------------------------------
# Reading and merging the manifest parts


def part_files(out: Path) -> list[Path]:
    """Every manifest part under ``out``, by name."""
    folder = out / PARTS_DIR
    return sorted(p for p in folder.glob("rank-*.jsonl") if _PART.fullmatch(p.name)) if folder.is_dir() else []


def _runs(path: Path) -> list[list[dict[str, Any]]]:
    """A manifest file cut into runs: each a header record followed by its input records."""
    runs: list[list[dict[str, Any]]] = []
    for record in read_manifest(path):
        if record.get("type") == "run" or not runs:
            runs.append([])
        runs[-1].append(record)
    return runs


def history(out: Path, parts: Optional[Sequence[Path]] = None) -> Iterator[dict[str, Any]]:
    """Every manifest record of ``out`` in the order it was written: ``manifest.jsonl`` first (it
    only holds runs older than any part left), then the runs of the parts by start time."""
    merged = out / Manifest.NAME
    if merged.is_file():
        yield from read_manifest(merged)
    runs = [(run[0].get("started", ""), path.name, i, run)
            for path in (part_files(out) if parts is None else parts) for i, run in enumerate(_runs(path))]
    for *_, run in sorted(runs, key=lambda r: r[:3]):
        yield from run


def latest_status(records: Iterator[dict[str, Any]]) -> dict[str, str]:
    """output name -> the status of its latest input record."""
    status: dict[str, str] = {}
    for record in records:
        output = record.get("output")
        if record.get("type") == "input" and isinstance(output, str):
            status[output] = str(record.get("status"))
    return status


def _held(path: Path) -> bool:
    """Whether a process holds the lock of the manifest file ``path`` (so it is still writing it)."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


@contextmanager
def merge_lock(out: Path, exclusive: bool) -> Iterator[None]:
    """The lock merges take (exclusive) and readers of the parts take (shared): a reader never sees
    a part deleted before its lines reached ``manifest.jsonl``."""
    folder = out / PARTS_DIR
    if not folder.is_dir():
        yield
        return
    with open(folder / MERGE_LOCK, "ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


@dataclass
class MergeResult:
    merged: list[str]   # part names now in manifest.jsonl (and deleted)
    running: list[str]  # parts still held by a running process, left alone


def merge_parts(out: Path) -> MergeResult:
    """Fold every part no process holds into ``manifest.jsonl`` (one atomic replace), then delete them.

    Safe to run any time and from any shard: parts still being written are left for a later merge,
    and merges are serialised by :func:`merge_lock`.
    """
    with merge_lock(out, exclusive=True):
        parts = part_files(out)
        running = [p for p in parts if _held(p)]
        free = [p for p in parts if p not in running]
        if free:
            if _held(out / Manifest.NAME):
                raise InputError(f"a single-process infer.py run is writing {out / Manifest.NAME}; merge "
                                 "after it ends")
            lines = "".join(json.dumps(r) + "\n" for r in history(out, free))
            atomic_write_text(out / Manifest.NAME, lines)
            for path in free:
                path.unlink()
        return MergeResult([p.name for p in free], [p.name for p in running])


def remove_coordination_files(out: Path) -> None:
    """Delete markers, heartbeats and the merge lock once every part is merged (the folder then
    holds what a single-process run leaves)."""
    folder = out / PARTS_DIR
    if not folder.is_dir() or part_files(out):
        return
    for path in folder.iterdir():
        if path.suffix in (".done", ".alive") or path.name == MERGE_LOCK:
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else lives there (a part that appeared meanwhile): keep the folder


def merge_command(out: Path) -> int:
    """``psp infer --merge DIR``: merge the parts a partial run left; exit code 0, or 1 when some
    inputs failed or a part is still being written."""
    if not (out / PARTS_DIR).is_dir() and not (out / Manifest.NAME).is_file():
        raise InputError(f"'{out}' holds no {Manifest.NAME} and no {PARTS_DIR}/; give the --out folder of a run")
    # Markers stay: the shard that completes the run needs them to know it did (and tidies up).
    result = merge_parts(out)
    status = latest_status(history(out))
    ok = sum(s in ("ok", "skipped") for s in status.values())
    failed = sum(s == "failed" for s in status.values())
    print(f"merged {len(result.merged)} part(s) into {out / Manifest.NAME}: {ok} inputs done, {failed} failed",
          file=sys.stderr)
    if result.running:
        print(f"still being written (merge again when they end): {', '.join(result.running)}", file=sys.stderr)
    return 0 if failed == 0 and not result.running else 1
