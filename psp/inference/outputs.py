"""The files infer.py writes: latent files, PNG images and the manifest, all crash-safe.

Every file is written to a temporary name in its destination folder, flushed to disk and then
renamed over the destination (``os.replace`` is atomic within one file system), so a killed run
leaves either the old file or the complete new one, never a torn file. The temporary name is
derived from the destination, so a rerun reuses (and replaces) what a killed run left behind.

The manifest is append-only JSON lines; a run holds an exclusive ``flock`` on it for its lifetime
(released by the kernel even on SIGKILL), so two runs can never write to the same ``--out``.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from psp.io.atomic import atomic_write
from psp.io.images import to_image
from stylegan2.io import CheckpointFormatError, UnsafeCheckpointError, safe_load

LATENT_FORMAT = "psp-latent"
LATENT_VERSION = 1
LATENT_SUFFIXES = (".pt", ".npy")
# Metadata key of a tuned latent: the generator delta file it renders with (stylegan2.delta),
# relative to the latent file's folder (or absolute).
DELTA_KEY = "generator_delta"


class LatentFileError(ValueError):
    """A latent file that cannot be read back; the message is one line naming the file."""


def save_latent(path: Path, w_plus: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write W+ codes ``[n_styles, 512]`` as float32: ``.pt`` with ``meta``, or ``.npy`` (array only)."""
    # clone: a row of a batch is a view, and torch.save would store the whole batch's storage.
    w_plus = w_plus.detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format)
    if path.suffix == ".npy":
        atomic_write(path, lambda f: np.save(f, w_plus.numpy(), allow_pickle=False))
    else:
        record = {"format": LATENT_FORMAT, "version": LATENT_VERSION, "w_plus": w_plus, **meta}
        atomic_write(path, lambda f: torch.save(record, f))


def load_latent(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a latent file: ``(w_plus float32 [n_styles, 512], metadata)``; ``.npy`` has no metadata.

    A bare tensor or an array of shape ``[n_styles, 512]`` or ``[1, n_styles, 512]`` is accepted too,
    so latents from other tools render as well. Raises LatentFileError with the reason.
    """
    try:
        if path.suffix == ".npy":
            data: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = safe_load(path, map_location="cpu")
    except FileNotFoundError:
        raise LatentFileError(f"{path}: file not found") from None
    except (UnsafeCheckpointError, CheckpointFormatError) as exc:
        raise LatentFileError(str(exc)) from None  # already "<path>: <reason>"
    except (OSError, ValueError, EOFError) as exc:  # np.load: not an .npy file, or a pickled one
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentFileError(f"{path}: not a readable latent file ({reason})") from None
    meta: dict[str, Any] = {}
    if isinstance(data, dict):
        if "w_plus" not in data:
            raise LatentFileError(f"{path}: no 'w_plus' entry; not a latent file written by infer.py")
        meta = {k: v for k, v in data.items() if k != "w_plus"}
        data = data["w_plus"]
    if not isinstance(data, torch.Tensor):
        raise LatentFileError(f"{path}: 'w_plus' is a {type(data).__name__}, expected a tensor")
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2 or not data.is_floating_point():
        raise LatentFileError(f"{path}: expected float W+ codes [n_styles, 512], got "
                              f"{data.dtype} {list(data.shape)}")
    return data.float(), meta


def latent_delta(path: Path, meta: dict[str, Any]) -> Optional[Path]:
    """The generator delta file the latent at ``path`` names in ``meta``, or None (not tuned)."""
    named = meta.get(DELTA_KEY)
    if named is None:
        return None
    if not isinstance(named, str) or not named:
        raise LatentFileError(f"{path}: '{DELTA_KEY}' is {named!r}, expected the path of a delta file")
    return Path(path).parent / named


def save_png(path: Path, image: torch.Tensor) -> None:
    """Write ``[3, H, W]`` in [-1, 1] as a PNG, atomically."""
    pil = to_image(image)
    atomic_write(path, lambda f: pil.save(f, format="PNG"))


class Manifest:
    """``manifest.jsonl`` under an output folder: a header line per run, then one line per input.

    Lines are appended whole and flushed after each batch; a line torn by a crash is ignored by
    :func:`read_manifest`. ``name`` (relative to ``folder``) may name a shard's part instead.
    Construction takes the file's lock and raises BlockingIOError when another run holds it.
    Child processes forked while it is open share the lock: fork them first.
    """

    NAME = "manifest.jsonl"

    def __init__(self, folder: Path, name: str = NAME):
        self.path = folder / name
        self._file = open(self.path, "ab+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise
        # A run killed mid-line leaves no newline at the end; start our lines on a fresh one.
        size = self._file.seek(0, os.SEEK_END)
        if size > 0:
            self._file.seek(size - 1)
            if self._file.read(1) != b"\n":
                self._file.write(b"\n")

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` (one JSON line each) and push them to disk."""
        self._file.write("".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()  # also releases the lock

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: Path) -> Iterator[dict[str, Any]]:
    """The parsed lines of a manifest, skipping lines that are not complete JSON objects."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record
