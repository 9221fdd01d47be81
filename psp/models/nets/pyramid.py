"""Feature-pyramid W+ head with pSp "GradualStyleEncoder" semantics on any `feature_info` backbone.

Taps C1, C2, C3 are the outputs of the backbone's last three stages (strides 4, 8, 16 for a 256 input
with the default backbone: 64, 32, 16 pixels). Styles [0, 3) read C3; P2 = up(C3) + lateral1(C2)
feeds styles [3, 7); P1 = up(P2) + lateral2(C1) feeds styles [7, n_styles). Upsampling is bilinear
with align_corners=True, as in pSp, so released weights give the released codes.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from psp.models.nets.resnet import ResNet
from stylegan2.layers import EqualLinear

COARSE_END = 3  # styles [0, 3) come from C3 (pSp's coarse_ind)
MIDDLE_END = 7  # styles [3, 7) from P2, the rest from P1 (pSp's middle_ind)


class StyleBlock(nn.Module):
    """One W+ row from a feature map: x [B, in_chs, s, s] -> [B, style_dim].

    ceil(log2(s)) stride-2 3x3 convs, each followed by LeakyReLU(0.01) (PyTorch's default slope,
    which pSp uses here, not StyleGAN's 0.2), shrink the map to 1x1; then EqualLinear(style_dim,
    style_dim) with lr_mul 1. For s = 16, 32, 64 that is 4, 5, 6 convs, as in pSp.
    """

    def __init__(self, in_chs: int, style_dim: int, spatial: int):
        super().__init__()
        if spatial < 2:
            raise ValueError(f"style block needs a feature map of at least 2x2, got {spatial}x{spatial}")
        self.style_dim = style_dim
        n_convs = math.ceil(math.log2(spatial))
        chs = [in_chs] + [style_dim] * n_convs
        self.convs = nn.ModuleList(nn.Conv2d(chs[k], chs[k + 1], 3, 2, 1) for k in range(n_convs))
        self.linear = EqualLinear(style_dim, style_dim, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.01)
        return self.linear(x.reshape(-1, self.style_dim))


def _upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of `top` to `lateral`'s size, plus `lateral`."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class GradualStyleEncoder(nn.Module):
    """Backbone + feature pyramid -> W+ offsets: x [B, in_chans, S, S] -> [B, n_styles, style_dim].

    Args:
        backbone: a ResNet with at least three stages (its last three are tapped via feature_info).
        n_styles: W+ rows (2*log2(G.size) - 2).
        style_dim: W dimension.
        input_size: S, the square input side the style blocks are built for.
    """

    def __init__(self, backbone: ResNet, n_styles: int, style_dim: int = 512, input_size: int = 256):
        super().__init__()
        if len(backbone.feature_info) < 3:
            raise ValueError(f"the pyramid needs a backbone with >= 3 stages, got {len(backbone.feature_info)}")
        if n_styles < 1:
            raise ValueError(f"n_styles must be >= 1, got {n_styles}")
        c1, c2, c3 = backbone.feature_info[-3:]
        for info in (c1, c2, c3):
            if input_size % info["reduction"]:
                raise ValueError(f"input_size {input_size} must be divisible by the backbone stride "
                                 f"{info['reduction']}")
        self.backbone = backbone
        self.n_styles = n_styles
        self.style_dim = style_dim
        self.input_size = input_size
        width = c3["num_chs"]
        # pSp always builds both laterals; we build only those the styles read, because a parameter
        # without a gradient (n_styles <= 7, generators of 16 px and less) breaks DDP.
        self.n_levels = 1 + max(self.style_level(j) for j in range(n_styles))
        self.lateral1 = nn.Conv2d(c2["num_chs"], width, 1) if self.n_levels > 1 else None
        self.lateral2 = nn.Conv2d(c1["num_chs"], width, 1) if self.n_levels > 2 else None
        spatial = [input_size // c3["reduction"], input_size // c2["reduction"], input_size // c1["reduction"]]
        self.styles = nn.ModuleList(
            StyleBlock(width, style_dim, spatial[self.style_level(j)]) for j in range(n_styles)
        )
        self.merged_styles = None

    @staticmethod
    def style_level(j: int) -> int:
        """Pyramid level of style row j: 0 = C3 (coarse), 1 = P2 (middle), 2 = P1 (fine).

        Subclasses override it (ReStyle's backbone encoders read every row from level 0); the
        laterals, the pyramid and the inference rewrite all follow it."""
        return 0 if j < COARSE_END else 1 if j < MIDDLE_END else 2

    def pyramid(self, x: torch.Tensor, n_levels: int = 0) -> list[torch.Tensor]:
        """The first `n_levels` (default: all the rows read) pyramid levels: [C3, P2, P1], each
        [B, width, s, s]. Only the laterals those levels need run."""
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            side = self.input_size
            raise ValueError(f"encoder expects [B, C, {side}, {side}] inputs, got {list(x.shape)}")
        n_levels = n_levels or self.n_levels
        c1, c2, c3 = self.backbone(x)[-3:]
        levels = [c3]
        if n_levels > 1:
            levels.append(_upsample_add(c3, self.lateral1(c2)))
        if n_levels > 2:
            levels.append(_upsample_add(levels[1], self.lateral2(c1)))
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.pyramid(x)
        if self.merged_styles is not None:  # the inference rewrite of psp.models.nets.fuse.merge_style_blocks
            return torch.cat([merged(level) for merged, level in zip(self.merged_styles, levels)], dim=1)
        codes = [style(levels[self.style_level(j)]) for j, style in enumerate(self.styles)]
        return torch.stack(codes, dim=1)
