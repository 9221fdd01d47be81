"""Images sampled from the generator itself, with the W+ codes that made them.

Training demos and tests need no dataset with them, and evaluation gets held-out images whose
true codes are known (``latent_mse``).
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import Dataset

from psp.models.generated import device_of, resize_generated


class SyntheticDataset(Dataset):
    """Images drawn from the generator itself, with the W+ codes that made them.

    ``dataset[i]`` samples ``z ~ N(0, I)``, maps ``w = generator.get_latent(z)``, forms the W+ code
    ``latent`` (w repeated on all ``n_latent`` rows, truncated towards ``w_avg`` when
    ``truncation != 1``) and renders ``generator([latent], input_is_latent=True,
    randomize_noise=False)``, adaptive-average-pooled (``psp.models.generated.resize_generated``)
    to ``size``. Returns ``{"source", "target"}`` (the same image [3, size, size]), ``"latent"``
    [n_latent, style_dim] and ``"path"``. ``clamp=False`` keeps the image as drawn, so ``G(latent)``
    reproduces it exactly; ``clamp=True`` clamps it to [-1, 1], the range of every real image
    (training and validation use that, so the encoder never sees pixels a photo cannot have).

    ``fixed=True`` (held-out sets): sample i always comes from ``torch.Generator`` seeded with
    ``seed + i``. ``fixed=False`` (training): fresh samples on every call, from a private stream
    seeded by ``seed``, the process's torch seed (which differs per DataLoader worker and epoch) and
    the distributed rank (so that DDP ranks seeded alike still draw different images).

    The generator runs inside the data loader, without gradients, on whatever device it lives on.
    Use ``num_workers=0`` (PSPDataModule does): a CUDA generator cannot run in forked workers, and a
    tiny one is faster in the main process anyway.
    """

    def __init__(self, generator: nn.Module, n: int, size: int, seed: int = 0, truncation: float = 1.0,
                 w_avg: torch.Tensor | None = None, fixed: bool = False, clamp: bool = False):
        if n <= 0 or size <= 0:
            raise ValueError(f"SyntheticDataset needs n > 0 and size > 0, got n={n}, size={size}")
        if truncation <= 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        if truncation != 1.0 and w_avg is None:
            raise ValueError(f"truncation {truncation} needs w_avg (the centre to truncate towards)")
        self.generator, self.n, self.size, self.seed = generator, n, size, seed
        self.truncation, self.fixed, self.clamp = truncation, fixed, clamp
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
        device = device_of(self.generator)
        w = self.generator.get_latent(z.to(device))
        latent = w.unsqueeze(1).repeat(1, self.n_latent, 1)
        if self.truncation != 1.0:
            w_avg = self.w_avg.to(device=device, dtype=latent.dtype)
            latent = w_avg + self.truncation * (latent - w_avg)
        image, _ = self.generator([latent], input_is_latent=True, randomize_noise=False)
        image = resize_generated(image, self.size)[0].float().cpu()
        if self.clamp:
            image = image.clamp(-1.0, 1.0)
        return {"source": image, "target": image, "latent": latent[0].float().cpu(),
                "path": f"synthetic/{index:06d}"}


def _global_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
