"""Training data: paired image folders, images sampled from the generator, and the Lightning datamodule.

Every sample is a dict of ``source`` and ``target`` ([3, S, S] float32 in [-1, 1], on the CPU)
and ``path`` (a str naming the sample); synthetic samples add ``latent`` (the true W+ code).
Resizing is done per image with PIL (``psp.images.to_tensor``), which is exactly pSp's transform;
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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from psp.images import DEFAULT_MIN_SIZE, IMAGE_EXTENSIONS, ImageLoadError, list_images, load_rgb, to_tensor

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

    Files are found recursively (``psp.images.list_images``) and paired by relative path without
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
# Samples of the generator


class SyntheticDataset(Dataset):
    """Images drawn from the generator itself, with the W+ codes that made them.

    ``dataset[i]`` samples ``z ~ N(0, I)``, maps ``w = generator.get_latent(z)``, forms the W+ code
    ``latent`` (w repeated on all ``n_latent`` rows, truncated towards ``w_avg`` when
    ``truncation != 1``) and renders ``generator([latent], input_is_latent=True,
    randomize_noise=False)``, average-pooled (or, for a smaller generator, bilinearly enlarged)
    to ``size``. Returns ``{"source", "target"}`` (the same image [3, size, size], not clamped, so
    ``G(latent)`` reproduces it exactly), ``"latent"`` [n_latent, style_dim] and ``"path"``.

    ``fixed=True`` (held-out sets): sample i always comes from ``torch.Generator`` seeded with
    ``seed + i``. ``fixed=False`` (training): fresh samples on every call, from a private stream
    seeded by ``seed``, the process's torch seed (which differs per DataLoader worker and epoch) and
    the distributed rank (so that DDP ranks seeded alike still draw different images).

    The generator runs inside the data loader, without gradients, on whatever device it lives on.
    Use ``num_workers=0`` (PSPDataModule does): a CUDA generator cannot run in forked workers, and a
    tiny one is faster in the main process anyway.
    """

    def __init__(self, generator: nn.Module, n: int, size: int, seed: int = 0, truncation: float = 1.0,
                 w_avg: torch.Tensor | None = None, fixed: bool = False):
        if n <= 0 or size <= 0:
            raise ValueError(f"SyntheticDataset needs n > 0 and size > 0, got n={n}, size={size}")
        if truncation <= 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        if truncation != 1.0 and w_avg is None:
            raise ValueError(f"truncation {truncation} needs w_avg (the centre to truncate towards)")
        self.generator, self.n, self.size, self.seed = generator, n, size, seed
        self.truncation, self.fixed = truncation, fixed
        self.w_avg = None if w_avg is None else w_avg.detach()
        self.n_latent, self.style_dim = generator.n_latent, generator.style_dim
        self.rank = _global_rank()
        self._stream: torch.Generator | None = None
        self._stream_key: int | None = None

    def __len__(self) -> int:
        return self.n

    def _random_stream(self) -> torch.Generator:
        key = torch.initial_seed()
        if self._stream is None or key != self._stream_key:
            self._stream_key = key
            self._stream = torch.Generator().manual_seed(hash((key, self.seed, self.rank)) & (2**63 - 1))
        return self._stream

    @torch.no_grad()
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"SyntheticDataset index {index} out of range [0, {self.n})")
        rng = torch.Generator().manual_seed(self.seed + index) if self.fixed else self._random_stream()
        z = torch.randn(1, self.style_dim, generator=rng)  # drawn on the CPU: the same on every device
        device = _device_of(self.generator)
        w = self.generator.get_latent(z.to(device))
        latent = w.unsqueeze(1).repeat(1, self.n_latent, 1)
        if self.truncation != 1.0:
            w_avg = self.w_avg.to(device=device, dtype=latent.dtype)
            latent = w_avg + self.truncation * (latent - w_avg)
        image, _ = self.generator([latent], input_is_latent=True, randomize_noise=False)
        image = _resize(image, self.size)[0].float().cpu()
        return {"source": image, "target": image, "latent": latent[0].float().cpu(),
                "path": f"synthetic/{index:06d}"}


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, size, size]: average pooling down (pSp's face_pool), bilinear up."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    if image.shape[-1] > size:
        return F.adaptive_avg_pool2d(image, (size, size))
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _global_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


@torch.no_grad()
def estimate_w_avg(generator: nn.Module, n: int = W_AVG_SAMPLES, seed: int = 0) -> torch.Tensor:
    """Mean of ``generator.get_latent(z)`` over ``n`` z drawn from a seeded stream: [style_dim].

    Seeded (unlike ``Generator.mean_latent``) so every DDP rank computes the same centre."""
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    return generator.get_latent(z.to(_device_of(generator))).mean(0)


# ----------------------------------------------------------------------------------------------
# Lightning


class PSPDataModule(L.LightningDataModule):
    """Train and validation loaders for ``data.kind`` = ``images`` or ``synthetic``.

    Images: ``data.train_dir`` (+ ``train_target_dir``) with ``data.flip``, validated on
    ``data.test_dir`` (+ ``test_target_dir``), both resized to ``input_size``. Synthetic: a fresh
    sample stream of ``data.n_train`` per epoch and a fixed held-out set of ``data.n_test``
    (seed ``data.seed``), drawn from ``generator``; its loaders use no worker processes
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
            w_avg = estimate_w_avg(self.generator, seed=d.seed)
        common = dict(size=self.input_size, seed=d.seed, truncation=d.truncation, w_avg=w_avg)
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
