"""ReStyle's encoders: every W+ row from the backbone's final feature map (no pyramid).

- `BackboneEncoder` (ReStyle-pSp): row j = style block j on C3, the last stage's output (16 x 16 for
  a 256 input, 512 channels); each block is the pSp `StyleBlock` (log2(16) = 4 stride-2 convs).
- `ProgressiveBackboneEncoder` (ReStyle-e4e): the same rows combined as e4e does (w0 + deltas,
  `psp.models.nets.e4e.ProgressiveRows`).

The input has 6 channels (the image and the current reconstruction, concatenated on channels);
the output is a residual added to the current codes (see `psp.models.families`). Both are
`GradualStyleEncoder`s whose rows all read level 0, so no lateral is built and the official key
map (`input_layer`, `body`, `styles`) and the inference rewrite apply unchanged.
"""
from psp.models.nets.e4e import Encoder4Editing
from psp.models.nets.pyramid import GradualStyleEncoder


class BackboneEncoder(GradualStyleEncoder):
    """ReStyle-pSp's encoder: x [B, in_chans, S, S] -> residual codes [B, n_styles, style_dim]."""

    @staticmethod
    def style_level(j: int) -> int:
        """Every row reads the coarsest level (C3)."""
        return 0


class ProgressiveBackboneEncoder(Encoder4Editing):
    """ReStyle-e4e's encoder: w0 + progressive deltas, all rows from C3.
    x [B, in_chans, S, S] -> residual codes [B, n_styles, style_dim]."""

    @staticmethod
    def style_level(j: int) -> int:
        """Every row reads the coarsest level (C3)."""
        return 0
