"""What the generator draws, as the rest of the toolkit needs it: resized, and its average latent.

One definition of each, used by the model's decode, refinement, synthetic data and evaluation.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn


def resize_generated(images: torch.Tensor, size: Union[int, tuple[int, int]]) -> torch.Tensor:
    """Generator images [B, 3, H, W] -> [B, 3, h, w] (``size`` = h = w, or (h, w)); unchanged at that size.

    An adaptive average pool, as pSp's ``face_pool`` (1024 -> 256 averages 4x4 blocks). The same
    rule serves decoding, refinement and synthetic targets, so each compares like with like; for
    a generator smaller than ``size`` (tiny test and demo models) it repeats pixels.
    """
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == target:
        return images
    return F.adaptive_avg_pool2d(images, target)


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU when it has none)."""
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def estimate_w_avg(generator: nn.Module, n_samples: int, seed: int = 0, chunk: int = 8192) -> torch.Tensor:
    """Mean of the mapping network over `n_samples` seeded z ~ N(0, I): [style_dim].

    Chunked so 100k samples need little memory; summed in float64 so the mean does not depend
    on the chunking.
    """
    rng = torch.Generator().manual_seed(seed)  # CPU draws: the same w_avg on every device
    device = device_of(generator)
    total = torch.zeros(generator.style_dim, dtype=torch.float64)
    for start in range(0, n_samples, chunk):
        z = torch.randn(min(chunk, n_samples - start), generator.style_dim, generator=rng)
        total += generator.get_latent(z.to(device)).double().sum(0).cpu()
    return (total / n_samples).float()
