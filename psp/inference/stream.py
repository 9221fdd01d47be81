"""Decoding image files in worker processes, in order, with bounded prefetch.

Used by inversion and evaluation alike. A bad file yields its reason instead of an exception, so
the run reports it and goes on; memory does not grow with the number of inputs.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from psp.io.images import ImageLoadError, load_rgb, to_tensor

# A photo whose shorter side is below this is too small to say anything about a face.
MIN_IMAGE_SIDE = 32


class Batch(NamedTuple):
    """One batch of a stream: the decoded items, in order, and the items that failed."""

    indices: list[int]               # item indices of the decoded images, in order
    images: Optional[torch.Tensor]   # [len(indices), n_files, 3, S, S] in [-1, 1]; None if all failed
    failures: list[tuple[int, str]]  # (item index, reason)
    seconds: float = 0.0             # worker time spent decoding and resizing these files


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


class ImageFiles(Dataset):
    """Item i: file i of each path list decoded, (optionally face-aligned,) resized to ``size``.

    ``__getitem__(i)`` -> ``(i, [n_files, 3, size, size] in [-1, 1], None, seconds)``, or
    ``(i, None, reason, seconds)`` when a file cannot be used (with several lists, the reason names
    the file); ``seconds``: the time the item took.
    """

    def __init__(self, path_lists: Sequence[Sequence[Path]], size: int, align: bool = False):
        if len({len(paths) for paths in path_lists}) != 1:
            raise ValueError("ImageFiles: the path lists must have equal lengths")
        self.tables = [_PathTable(paths) for paths in path_lists]
        self.size, self.align = size, align
        self.errors: tuple[type[Exception], ...] = (ImageLoadError,)
        if align:
            from psp.inference.align import AlignError  # only --align needs the face-alignment module
            self.errors += (AlignError,)

    def __len__(self) -> int:
        return len(self.tables[0])

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], Optional[str], float]:
        start = time.perf_counter()
        images = []
        for table in self.tables:
            path = table[i]
            try:
                images.append(self._load(path))
            except self.errors as exc:
                reason = getattr(exc, "reason", None) or str(exc)
                return i, None, reason if len(self.tables) == 1 else f"{path}: {reason}", time.perf_counter() - start
        return i, torch.stack(images), None, time.perf_counter() - start

    def _load(self, path: Path) -> torch.Tensor:
        image = load_rgb(path, min_size=MIN_IMAGE_SIDE)
        if self.align:
            from psp.inference.align import align_face
            image = align_face(image, output_size=self.size, source="the image")  # the path is logged already
        return to_tensor(image, self.size)


def _collate(items: list[tuple[int, Optional[torch.Tensor], Optional[str], float]]) -> Batch:
    decoded = [(i, x) for i, x, err, _ in items if err is None]
    return Batch(indices=[i for i, _ in decoded],
                 images=torch.stack([x for _, x in decoded]) if decoded else None,
                 failures=[(i, err) for i, _, err, _ in items if err is not None],
                 seconds=sum(seconds for *_, seconds in items))


def stream_images(path_lists: Sequence[Sequence[Path]], size: int, batch_size: int, num_workers: int,
                  align: bool = False, pin_memory: bool = False) -> DataLoader:
    """Batches (:class:`Batch`) of decoded images in input order; at most 2 batches per worker in flight."""
    return DataLoader(ImageFiles(path_lists, size, align), batch_size=batch_size, shuffle=False,
                      drop_last=False, num_workers=num_workers, collate_fn=_collate,
                      pin_memory=pin_memory, prefetch_factor=2 if num_workers > 0 else None)
