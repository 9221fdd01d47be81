"""e4e's encoder ("Encoder4Editing"): one style w0 for every row, plus per-row deltas unlocked progressively.

    raw_j  = style block j on its pyramid level (the pSp pyramid of `GradualStyleEncoder`)
    code_0 = raw_0 = w0;  code_j = w0 + raw_j for 1 <= j <= stage;  code_j = w0 for j > stage

`progressive_stage` is the original's stage value: 0 trains w0 alone (every row the same code, a
point of W), k adds the deltas of rows 1..k; ``None`` is its "Inference" stage (all rows), at which
the released `e4e_ffhq_encode.pt` runs. Rows past the stage are neither computed nor given
gradients, as in the original: a partial stage leaves those style blocks (and the laterals of
levels no active row reads) without gradients, which DDP must be told about
(``find_unused_parameters``). The parameter layout is exactly `GradualStyleEncoder`'s, so the
official key map and the inference rewrite (BN folding, merged style blocks, which need the full
stage) apply unchanged.
"""
from typing import Optional

import torch

from psp.models.nets.pyramid import GradualStyleEncoder


class ProgressiveRows:
    """The e4e combination of raw style rows, for any encoder whose `forward` gives raw rows.

    Mixed in before a `GradualStyleEncoder` subclass; needs its `styles`, `style_level`,
    `pyramid`, `n_styles` and `merged_styles`.
    """

    progressive_stage: Optional[int] = None

    def set_progressive_stage(self, stage: Optional[int]) -> None:
        """Rows 1..stage get their delta (0: w0 only); None: every row (the inference stage)."""
        if stage is not None and (not isinstance(stage, int) or stage < 0):
            raise ValueError(f"progressive stage must be a non-negative int or None, got {stage!r}")
        self.progressive_stage = stage

    @property
    def n_deltas(self) -> int:
        """How many rows (after row 0) currently add their own delta."""
        last = self.n_styles - 1
        return last if self.progressive_stage is None else min(self.progressive_stage, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, S, S] -> W+ codes (before w_avg) [B, n_styles, style_dim]."""
        n_deltas = self.n_deltas
        if n_deltas == self.n_styles - 1:
            raw = super().forward(x)  # every row (merged blocks after the inference rewrite)
        else:
            if self.merged_styles is not None:
                raise RuntimeError("the inference rewrite of an e4e encoder runs only at the full stage")
            levels = self.pyramid(x, n_levels=1 + self.style_level(n_deltas))
            raw = torch.stack([self.styles[j](levels[self.style_level(j)]) for j in range(n_deltas + 1)], dim=1)
        w0 = raw[:, :1]
        rest = self.n_styles - 1 - n_deltas
        parts = [w0, w0 + raw[:, 1:]]
        if rest:
            parts.append(w0.expand(-1, rest, -1))
        return torch.cat(parts, dim=1)


class Encoder4Editing(ProgressiveRows, GradualStyleEncoder):
    """e4e's encoder on the pSp pyramid: x [B, in_chans, S, S] -> codes [B, n_styles, style_dim].

    Args as `GradualStyleEncoder`; `progressive_stage` as `ProgressiveRows.set_progressive_stage`.
    """

    def __init__(self, backbone, n_styles: int, style_dim: int = 512, input_size: int = 256,
                 progressive_stage: Optional[int] = None):
        super().__init__(backbone, n_styles, style_dim, input_size)
        self.set_progressive_stage(progressive_stage)
