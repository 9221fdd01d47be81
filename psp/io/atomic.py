"""Crash-safe file writes: a reader sees the old file or the complete new one, never a torn file.

Each write goes to a temporary name in the destination folder, is flushed to disk (``fsync``) and
then renamed over the destination (``os.replace`` is atomic within one file system). The
temporary name (``.<name>.tmp``, hidden) is derived from the destination alone, so a rerun
replaces what a killed run left behind; no two writers may target the same file at once (infer
holds a lock on its output folder, and shards never share a file).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """``data`` into ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """``text`` (UTF-8) into ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` into ``path`` atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
