"""What the generator draws, as the rest of the toolkit needs it: resized, and its average latent.

One definition of each, used by the model's decode, refinement, synthetic data and evaluation;
and the output scaling that gives a randomly initialised generator the pixel statistics of photos.
"""
from __future__ import annotations

import math
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


# Pixel standard deviation of photos scaled to [-1, 1] is about 0.4-0.55 (faces, natural images).
# A randomly initialised StyleGAN2 draws with a std of about 1.7 instead (measured on the 64 px demo
# generator: half of its pixels outside [-1, 1]); scaled to 0.4 about 97 % of them lie inside.
IMAGE_STD = 0.4
# Pixels measured: 64 images of 64 px; fewer images for larger generators (a random one of 256 px
# or more serves speed measurements only, where building it must stay quick), at least one.
SCALE_PIXELS = 64 * 64 * 64


@torch.no_grad()
def scale_to_image_range(generator: nn.Module, seed: int = 0, target_std: float = IMAGE_STD) -> float:
    """Scale a randomly initialised generator so its images have photo statistics; returns the factor.

    1. Render ``n = clip(SCALE_PIXELS / size**2, 1, 64)`` images ``G(w)`` (``w = get_latent(z)``,
       ``z`` drawn from a CPU ``torch.Generator`` seeded with ``seed``, w on every W+ row, the
       stored noise), in chunks of 16.
    2. Measure their pixel standard deviation ``s`` over all images, channels and pixels.
    3. Multiply the weight and bias of every ``to_rgb`` layer by ``target_std / s``.

    The image is the sum of the ``to_rgb`` outputs (each a linear map of its features, no
    demodulation) with upsampled skips, so every image is scaled by exactly ``target_std / s`` and
    nothing else changes (the mapping network and ``w_avg`` are untouched). Only for random
    generators: trained ones already draw in [-1, 1].
    """
    n_samples = min(64, max(1, SCALE_PIXELS // generator.size ** 2))
    z = torch.randn(n_samples, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    device = device_of(generator)
    total = total_sq = 0.0
    for chunk in z.split(16):
        w = generator.get_latent(chunk.to(device))
        images, _ = generator([w.unsqueeze(1).repeat(1, generator.n_latent, 1)], input_is_latent=True,
                              randomize_noise=False)
        total += float(images.double().sum())
        total_sq += float(images.double().square().sum())
    count = n_samples * 3 * generator.size ** 2
    factor = target_std / math.sqrt(total_sq / count - (total / count) ** 2)
    for layer in [generator.to_rgb1, *generator.to_rgbs]:
        layer.conv.weight.mul_(factor)
        layer.bias.mul_(factor)
    return factor
