"""Training data: paired image folders, images sampled from the generator, and the Lightning datamodule.

Every sample is a dict of ``source`` and ``target`` ([3, S, S] float32 in [-1, 1], on the CPU)
and ``path`` (a str naming the sample); synthetic samples add ``latent`` (the true W+ code).
Resizing is done per image with PIL (``psp.io.images.to_tensor``), which is exactly pSp's transform;
the only augmentation, the horizontal flip, is a tensor flip applied to source and target alike.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from psp.models.generated import estimate_w_avg
from psp.models.synthetic import SyntheticDataset
from psp.io.images import DEFAULT_MIN_SIZE, IMAGE_EXTENSIONS, ImageLoadError, list_images, load_rgb, to_tensor

if TYPE_CHECKING:
    from psp.config import DataConfig, TrainConfig

W_AVG_SAMPLES = 4096  # mapping-network samples for the truncation centre when none is given


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message is one line naming the file or folder."""


class UnreadableImageWarning(UserWarning):
    """A training image was skipped because it cannot be decoded (filter with this category)."""


# ----------------------------------------------------------------------------------------------
# Image folders


class PairedImageDataset(Dataset):
    """Source/target image pairs from two folders (or one folder for plain encoding).

    Files are found recursively (``psp.io.images.list_images``) and paired by relative path without
    the extension: ``src/a/001.png`` goes with ``tgt/a/001.jpg``. A source without a target, or a
    target name that two files share, is a :class:`DatasetError` at construction.

    ``dataset[i]`` -> ``{"source": [3, size, size], "target": [3, size, size], "path": "a/001.png"}``
    (path relative to ``source_dir``). With ``flip`` both images are mirrored together with
    probability 1/2.

    A file that cannot be decoded does not stop training: it is marked bad, an
    :class:`UnreadableImageWarning` names it once, and the next good pair is returned instead. The
    marks live in shared memory, so :attr:`skipped` and :attr:`skipped_files` count files skipped
    in DataLoader worker processes too.
    """

    def __init__(self, source_dir: str | os.PathLike, target_dir: str | os.PathLike | None = None,
                 size: int = 256, flip: bool = False, min_size: int = DEFAULT_MIN_SIZE):
        self.source_dir = Path(source_dir)
        self.size, self.flip, self.min_size = size, flip, min_size
        sources = list_images(self.source_dir)
        if not sources:
            raise DatasetError(f"no images in '{self.source_dir}' (looked recursively for "
                               f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        same = target_dir is None or Path(target_dir).resolve() == self.source_dir.resolve()
        self.target_dir = None if same else Path(target_dir)
        # Relative paths as one numpy string array rather than a list of Path objects: DataLoader
        # workers then share it instead of copying it page by page as refcounts change.
        self._sources = np.array([p.relative_to(self.source_dir).as_posix() for p in sources])
        self._targets = None if same else np.array(self._match_targets())
        self._bad = torch.zeros(len(sources), dtype=torch.bool).share_memory_()

    def _match_targets(self) -> list[str]:
        targets = list_images(self.target_dir)
        by_key: dict[str, str] = {}
        for path in targets:
            rel = path.relative_to(self.target_dir).as_posix()
            key = _without_suffix(rel)
            if key in by_key:
                raise DatasetError(f"target folder '{self.target_dir}' has two files for '{key}': "
                                   f"{by_key[key]} and {rel}; keep one")
            by_key[key] = rel
        missing = [rel for rel in self._sources if _without_suffix(rel) not in by_key]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"no target for source '{self.source_dir / missing[0]}' in '{self.target_dir}'"
                               f"{more}; targets are matched by relative path, extension ignored")
        return [by_key[_without_suffix(rel)] for rel in self._sources]

    def __len__(self) -> int:
        return len(self._sources)

    @property
    def skipped(self) -> int:
        """Number of files found unreadable so far (in any process)."""
        return int(self._bad.sum())

    @property
    def skipped_files(self) -> list[str]:
        """Relative paths of the sources skipped so far (a bad target marks its source)."""
        return [str(self._sources[i]) for i in torch.nonzero(self._bad).flatten().tolist()]

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if self._bad[i]:
                continue
            try:
                return self._load(i)
            except ImageLoadError as exc:
                self._bad[i] = True
                warnings.warn(f"skipping unreadable training image {exc}", UnreadableImageWarning,
                              stacklevel=2)
        raise DatasetError(f"every image pair under '{self.source_dir}' is unreadable; "
                           "see the warnings above")

    def _load(self, i: int) -> dict:
        rel = str(self._sources[i])
        source = to_tensor(load_rgb(self.source_dir / rel, self.min_size), self.size)
        if self._targets is None:
            target = source
        else:
            target = to_tensor(load_rgb(self.target_dir / str(self._targets[i]), self.min_size), self.size)
        if self.flip and torch.rand(()) < 0.5:
            same = target is source
            source = source.flip(-1)
            target = source if same else target.flip(-1)
        return {"source": source, "target": target, "path": rel}


def _without_suffix(rel: str) -> str:
    return PurePosixPath(rel).with_suffix("").as_posix()


# ----------------------------------------------------------------------------------------------
# Lightning


class PSPDataModule(L.LightningDataModule):
    """Train and validation loaders for ``data.kind`` = ``images`` or ``synthetic``.

    Images: ``data.train_dir`` (+ ``train_target_dir``) with ``data.flip``, validated on
    ``data.test_dir`` (+ ``test_target_dir``), both resized to ``input_size``. Synthetic: a fresh
    sample stream of ``data.n_train`` per epoch and a fixed held-out set of ``data.n_test``
    (seed ``data.seed``), drawn from ``generator`` and clamped to [-1, 1] as photos are; its
    loaders use no worker processes
    (``data.num_workers`` applies to image folders only). ``w_avg`` ([style_dim] or
    [n_styles, style_dim]) is the truncation centre; it is estimated from the generator when
    ``data.truncation != 1`` and none is given.

    Batches: ``train.batch_size`` per device with ``drop_last`` for training, ``train.test_batch_size``
    without for validation. Under DDP Lightning swaps in a DistributedSampler (keeping the shuffle).
    """

    def __init__(self, data_cfg: "DataConfig", train_cfg: "TrainConfig", input_size: int,
                 generator: nn.Module | None = None, w_avg: torch.Tensor | None = None):
        super().__init__()
        if data_cfg.kind == "synthetic" and generator is None:
            raise ValueError("data.kind=synthetic needs the generator to sample from (generator=...)")
        self.data_cfg, self.train_cfg, self.input_size = data_cfg, train_cfg, input_size
        self.generator, self.w_avg = generator, w_avg
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        d = self.data_cfg
        if d.kind == "images":
            self.train_set = PairedImageDataset(d.train_dir, d.train_target_dir, self.input_size, flip=d.flip)
            self.val_set = PairedImageDataset(d.test_dir, d.test_target_dir, self.input_size, flip=False)
            return
        w_avg = self.w_avg
        if d.truncation != 1.0 and w_avg is None:
            w_avg = estimate_w_avg(self.generator, W_AVG_SAMPLES, seed=d.seed)
        common = dict(size=self.input_size, seed=d.seed, truncation=d.truncation, w_avg=w_avg, clamp=True)
        self.train_set = SyntheticDataset(self.generator, d.n_train, fixed=False, **common)
        self.val_set = SyntheticDataset(self.generator, d.n_test, fixed=True, **common)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        if len(self.train_set) < self.train_cfg.batch_size:
            raise DatasetError(f"the training set has {len(self.train_set)} samples, fewer than "
                               f"train.batch_size={self.train_cfg.batch_size}; every batch would be dropped")
        return self._loader(self.train_set, self.train_cfg.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, self.train_cfg.test_batch_size, train=False)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        workers = self.data_cfg.num_workers if self.data_cfg.kind == "images" else 0
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())
