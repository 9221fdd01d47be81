"""pSp's identity term: a frozen face recogniser compares the faces of two images.

Used as a training loss and as the ``id_similarity`` evaluation metric.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from psp.models.frozen import FrozenModule

# The face box of pSp's identity loss in a 256x256 FFHQ-aligned image: rows 35:223, columns 32:220.
ID_CROP_256 = (35, 223, 32, 220)
ID_INPUT_SIZE = 112  # the ArcFace input side




def id_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of pSp's face crop, scaled from 256x256 to ``height x width``."""
    top, bottom, left, right = ID_CROP_256
    sy, sx = height / 256, width / 256
    return (int(math.floor(top * sy + 0.5)), int(math.floor(bottom * sy + 0.5)),
            int(math.floor(left * sx + 0.5)), int(math.floor(right * sx + 0.5)))


class IDLoss(FrozenModule):
    """pSp's identity loss with a frozen face recogniser (ArcFace IR-SE-50).

    Each image [B, 3, H, W] in [-1, 1] is cropped to the face box (``[35:223, 32:220]`` at 256,
    scaled for other sizes), adaptive-average-pooled to 112x112 and embedded as is (no re-normalising)
    into unit vectors [B, 512]. forward(y_hat, y) -> (loss, similarity), both scalars:
    ``loss = mean(1 - <f(y_hat), f(y)>)`` and ``similarity = mean(<f(y_hat), f(y)>)`` (detached, a
    metric). The target embedding is computed without gradients, as pSp detaches it.
    """

    def __init__(self, arcface: nn.Module):
        super().__init__()
        self.arcface = arcface
        self.pool = nn.AdaptiveAvgPool2d((ID_INPUT_SIZE, ID_INPUT_SIZE))
        self.freeze()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> unit embeddings [B, D]."""
        top, bottom, left, right = id_crop_box(x.shape[-2], x.shape[-1])
        return self.arcface(self.pool(x[:, :, top:bottom, left:right]))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = self.embed(y).float()
        similarity = (self.embed(y_hat).float() * target).sum(dim=1)
        return (1.0 - similarity).mean(), similarity.mean().detach()
