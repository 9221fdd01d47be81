"""SeFa: closed-form directions from the generator's style-modulation weights (Shen & Zhou 2021).

A direction that changes the modulation of the chosen layers most is a top eigenvector of
``A^T A``, ``A`` the stacked modulation weights ``[sum of in-channels, D]`` with each row (one
channel's weight vector) normalised to unit length.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def modulations_of_row(generator: nn.Module, row: int) -> list[nn.Module]:
    """The modulation EqualLinears that read W+ row ``row``.

    Row 0 feeds conv1, row 1 to_rgb1 and convs[0]; row r >= 1 feeds convs[r - 1] (when it exists)
    and, for odd r >= 3, to_rgbs[(r - 3) // 2].
    """
    mods = []
    if row == 0:
        mods.append(generator.conv1.conv.modulation)
    if row == 1:
        mods.append(generator.to_rgb1.conv.modulation)
    if 1 <= row <= len(generator.convs):
        mods.append(generator.convs[row - 1].conv.modulation)
    if row >= 3 and row % 2 == 1:
        mods.append(generator.to_rgbs[(row - 3) // 2].conv.modulation)
    return mods


def modulation_matrix(generator: nn.Module, layers: Sequence[int]) -> torch.Tensor:
    """``A`` ``[C, D]``: the unit-normalised modulation weight rows of the layers' W+ rows."""
    seen, weights = set(), []
    for row in layers:
        for mod in modulations_of_row(generator, row):
            if id(mod) not in seen:
                seen.add(id(mod))
                weights.append(mod.weight.detach().double().cpu())
    a = torch.cat(weights)
    return a / a.norm(dim=1, keepdim=True)


def sefa(generator: nn.Module, layers: Sequence[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` SeFa directions of W+ rows ``layers``: ``(directions [k, D] unit rows, eigenvalues [k])``.

    Computed by an SVD of ``A`` (right singular vectors = eigenvectors of ``A^T A``); the sign of
    each is fixed so its largest-magnitude entry is positive, which makes the result deterministic.
    """
    _, s, vh = torch.linalg.svd(modulation_matrix(generator, layers), full_matrices=False)
    vh = vh[:k]
    sign = torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    return (vh * sign).float(), (s[:k] ** 2).float()
