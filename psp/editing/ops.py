"""Operations on W+ codes: move along a direction, mix rows of two codes, interpolate.

All functions take and return tensors; ``n`` is the generator's number of W+ rows (``n_styles``)
and ``D`` its style width (512 for the public generators).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from psp.editing.errors import EditingError


def parse_layers(text: str, n_styles: int) -> list[int]:
    """``"0-7"``, ``"3"``, ``"0-3,8"`` -> sorted W+ row indices, each checked against ``n_styles``."""
    rows: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            rows.update(range(first, last + 1))
    except ValueError:
        raise EditingError(f"layer range '{text}' does not parse; write e.g. 0-7 or 0-3,8") from None
    if not rows or min(rows) < 0 or max(rows) >= n_styles:
        raise EditingError(f"layer range '{text}' is outside this generator's W+ rows 0-{n_styles - 1}")
    return sorted(rows)


def parse_strengths(text: str) -> list[float]:
    """``"-3:3:7"`` (start:stop:count, both ends included) or ``"1.5"`` -> the list of strengths."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise EditingError(f"strength '{text}' does not parse; write START:STOP:COUNT (e.g. -3:3:7) "
                           "or one number") from None
    if len(parts) == 1:
        return parts
    if len(parts) != 3 or parts[2] < 1 or parts[2] != int(parts[2]):
        raise EditingError(f"strength '{text}' does not parse; write START:STOP:COUNT with COUNT >= 1")
    return torch.linspace(parts[0], parts[1], int(parts[2]), dtype=torch.float64).tolist()


def edit(codes: torch.Tensor, direction: torch.Tensor, strength: float,
         layers: Optional[Sequence[int]] = None) -> torch.Tensor:
    """``codes + strength * direction`` on the W+ rows ``layers`` (all rows when None).

    codes ``[B, n, D]`` or ``[n, D]``; direction ``[D]``, ``[1, D]`` (the same vector for every row)
    or ``[n, D]`` (one per row). Returns a new tensor shaped like ``codes``.
    """
    n, width = codes.shape[-2:]
    if direction.ndim == 2 and direction.shape[0] == 1:
        direction = direction[0]
    if direction.shape[-1] != width or (direction.ndim == 2 and direction.shape[0] != n) or direction.ndim > 2:
        raise EditingError(f"direction of shape {list(direction.shape)} does not fit W+ codes "
                           f"{list(codes.shape[-2:])}: it must be [{width}], [1, {width}] or [{n}, {width}]")
    step = direction.to(codes).expand(n, width)
    mask = torch.zeros(n, 1, dtype=codes.dtype, device=codes.device)
    mask[list(range(n)) if layers is None else list(layers)] = 1
    return codes + strength * mask * step


def mix(a: torch.Tensor, b: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Style mixing: ``a`` with its rows ``layers`` taken from ``b``. a, b ``[..., n, D]``."""
    out = a.clone()
    out[..., list(layers), :] = b[..., list(layers), :]
    return out


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """``steps`` codes from ``a`` to ``b`` (both ends included): ``[steps, *a.shape]``.

    Linear by default (W+ is roughly flat); ``spherical`` interpolates each row along the great
    circle (slerp), which suits Gaussian z-like codes whose norm concentrates.
    """
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device).view(-1, *[1] * a.ndim)
    if not spherical:
        return a + t * (b - a)
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.arccos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
