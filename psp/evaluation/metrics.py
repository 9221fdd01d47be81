"""Reconstruction quality per image: L2, LPIPS, MS-SSIM and identity similarity.

Every metric takes a reconstruction ``y_hat`` and its target ``y``, both [B, 3, H, W] in [-1, 1]
(the toolkit's image range), and returns one value per image, [B] float32 on the CPU:

- ``l2``: mean squared error over all pixels and channels, in [-1, 1] units (pSp's ``F.mse_loss``
  and the ReStyle evaluation script use this range; divide by 4 for [0, 1] units). Lower is better.
- ``lpips``: LPIPS v0.1 with the AlexNet trunk (pSp's training and evaluation choice). Lower is better.
- ``ms_ssim``: kornia's multi-scale SSIM (``kornia.losses.MS_SSIMLoss`` with ``alpha=1``,
  ``compensation=1``, so the loss is exactly ``1 - MS-SSIM``) on images mapped to [0, 1]. Note that
  kornia implements the full-resolution variant of Zhao et al. 2017 (five Gaussians, sigma 0.5..8,
  all at full resolution, zero padding of 16 px), not the dyadic pyramid of Wang et al. 2003 that
  ``pytorch-msssim`` computes: values are comparable between our runs, not with tables computed by
  other code. It needs no minimum size, but below ~64 px the padded border dominates. Higher is better.
- ``id_similarity``: cosine similarity of ArcFace IR-SE-50 embeddings (pSp's identity-loss network
  and crop, ``psp.training.losses.IDLoss``). The papers' identity metric uses CurricularFace instead; ours is
  measured with the very network the encoder was trained against, so it is optimistic and not
  comparable with their tables. Higher is better.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from kornia.losses import MS_SSIMLoss
from torch import nn

from psp.models.identity import IDLoss
from psp.models.lpips import LPIPSLoss

# Metric -> True when a larger value is better (the report ranks and labels by this).
HIGHER_IS_BETTER = {"l2": False, "lpips": False, "ms_ssim": True, "id_similarity": True}

DEFINITIONS = {
    "l2": "mean squared error per image, pixels in [-1, 1] (pSp convention; /4 for [0, 1])",
    "lpips": "LPIPS v0.1, AlexNet trunk, inputs in [-1, 1]",
    "ms_ssim": "kornia MS_SSIMLoss(alpha=1, compensation=1): 1 - loss on [0, 1] images; full-resolution "
               "Gaussian variant (Zhao et al. 2017), not Wang et al.'s dyadic pyramid",
    "id_similarity": "cosine similarity of ArcFace IR-SE-50 embeddings (pSp face crop); NOT the "
                     "CurricularFace metric of the papers",
}


def l2_per_image(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image: [B, 3, H, W] x2 in [-1, 1] -> [B]."""
    return (y_hat.float() - y.float()).pow(2).flatten(1).mean(1)


class ReconstructionMetrics(nn.Module):
    """The metrics of the module docstring for one batch at a time.

    ``lpips``: a :class:`psp.models.lpips.LPIPSLoss` or None (the metric is left out); ``arcface``: a face
    recogniser ([B, 3, 112, 112] -> unit [B, D]) or None. ``forward(y_hat, y)`` -> ``{name: [B]}``
    (float32, CPU) for each available metric, in the order of :attr:`names`.
    """

    def __init__(self, lpips: Optional[LPIPSLoss] = None, arcface: Optional[nn.Module] = None):
        super().__init__()
        self.lpips = lpips
        self.id_loss = IDLoss(arcface) if arcface is not None else None
        # alpha=1 drops the L1 term and compensation=1 the scale: the loss map is 1 - MS-SSIM.
        self.ms_ssim_loss = MS_SSIMLoss(data_range=1.0, alpha=1.0, compensation=1.0, reduction="none")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, present in (("l2", True), ("lpips", self.lpips is not None),
                                                ("ms_ssim", True), ("id_similarity", self.id_loss is not None))
                     if present)

    @torch.no_grad()
    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y_hat.shape != y.shape or y.dim() != 4 or y.shape[1] != 3:
            raise ValueError(f"metrics expect two [B, 3, H, W] images of the same shape, got "
                             f"{list(y_hat.shape)} and {list(y.shape)}")
        y_hat, y = y_hat.float(), y.float()
        out = {"l2": l2_per_image(y_hat, y)}
        if self.lpips is not None:
            if min(y.shape[-2:]) < 32:
                raise ValueError(f"LPIPS (AlexNet) needs images of at least 32x32, got {list(y.shape[-2:])}")
            out["lpips"] = self.lpips(y_hat, y, reduction="none")
        loss_map = self.ms_ssim_loss((y_hat + 1) / 2, (y + 1) / 2)  # [B, H, W]
        out["ms_ssim"] = 1.0 - loss_map.flatten(1).mean(1)
        if self.id_loss is not None:
            out["id_similarity"] = (self.id_loss.embed(y_hat).float() * self.id_loss.embed(y).float()).sum(1)
        return {name: out[name].detach().float().cpu() for name in self.names}


def summarize(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "median", "min", "max", "n"}`` of finite values (std: population, ddof 0).

    Non-finite values are excluded and counted in ``"non_finite"`` when there are any; with no
    finite value the statistics are None.
    """
    data = [float(v) for v in values]
    finite = sorted(v for v in data if math.isfinite(v))
    out: dict = {"n": len(finite)}
    if len(finite) < len(data):
        out["non_finite"] = len(data) - len(finite)
    if not finite:
        return {**out, "mean": None, "std": None, "median": None, "min": None, "max": None}
    n = len(finite)
    mean = sum(finite) / n
    median = finite[n // 2] if n % 2 else (finite[n // 2 - 1] + finite[n // 2]) / 2
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / n)
    return {**out, "mean": mean, "std": std, "median": median, "min": finite[0], "max": finite[-1]}
