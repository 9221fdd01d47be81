"""Small building layers for the encoder backbones, one concept each, plus the string factories.

The factories turn config strings into layer constructors so that blocks share one signature:
`get_act(name)(channels)`, `get_attn(name)(channels)`, `get_aa(enabled)(channels, stride)`.
"""
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

ActFactory = Callable[[int], nn.Module]
AttnFactory = Callable[[int], nn.Module]
AAFactory = Callable[[int, int], nn.Module]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate of the ArcFace IR-SE unit.

    x [B, C, H, W] -> x * sigmoid(fc2(relu(fc1(mean_hw(x))))), same shape.
    fc1: C -> rd_channels and fc2: rd_channels -> C are 1x1 convs without bias. The reduced width is
    given explicitly; pSp's is exactly `C // 16` (4 for 64 channels), never rounded up, because the
    released weights have that shape.
    """

    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        if rd_channels < 1:
            raise ValueError(f"SE reduced width must be >= 1, got {rd_channels} for {channels} channels")
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=False)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * torch.sigmoid(s)


class EfficientChannelAttention(nn.Module):
    """ECA gate (Wang et al. 2020): a 1-D conv across channels of the pooled descriptor.

    x [B, C, H, W] -> x * sigmoid(conv1d(mean_hw(x))), same shape. The kernel size follows the
    paper's adaptive rule k = |log2(C)/gamma + b/gamma| rounded up to odd (gamma=2, b=1).
    """

    def __init__(self, channels: int, gamma: int = 2, beta: int = 1):
        super().__init__()
        t = int(abs(math.log2(channels) / gamma + beta / gamma))
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))                       # [B, C]
        s = self.conv(s.unsqueeze(1)).squeeze(1)  # channels treated as a 1-D sequence
        return x * torch.sigmoid(s)[:, :, None, None]


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling (Zhang 2019): binomial low-pass filter, then subsample.

    x [B, C, H, W] -> [B, C, ceil(H/stride), ceil(W/stride)]. The filter is outer([1, 2, 1]) / 16,
    applied depthwise with reflect padding. It is a non-persistent buffer: a constant of the
    architecture, not a weight, so it never appears in checkpoints.
    """

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.channels = channels
        self.stride = stride
        taps = torch.tensor([1.0, 2.0, 1.0])
        filt = torch.outer(taps, taps) / taps.sum() ** 2
        self.register_buffer("filt", filt.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)


class SpaceToDepth(nn.Module):
    """Lossless downsampling by folding each block_size x block_size patch into channels.

    x [B, C, H, W] -> [B, C * bs * bs, H / bs, W / bs]; output channel index is
    (row_in_patch * bs + col_in_patch) * C + c. H and W must be divisible by bs.
    """

    def __init__(self, block_size: int = 4):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"SpaceToDepth block_size must be >= 1, got {block_size}")
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.block_size
        b, c, h, w = x.shape
        if h % bs or w % bs:
            raise ValueError(f"SpaceToDepth(block_size={bs}) needs H and W divisible by {bs}, got {h}x{w}")
        x = x.view(b, c, h // bs, bs, w // bs, bs)
        x = x.permute(0, 3, 5, 1, 2, 4)  # [B, bs, bs, C, H/bs, W/bs]
        return x.reshape(b, c * bs * bs, h // bs, w // bs)


ACTS = ("prelu", "relu", "silu")
ATTENTIONS = ("none", "se", "eca")


def get_act(name: str) -> ActFactory:
    """Activation constructor `(channels) -> nn.Module` for "prelu" (one slope per channel, as in
    ArcFace), "relu" or "silu"."""
    if name == "prelu":
        return lambda channels: nn.PReLU(channels)
    if name == "relu":
        return lambda channels: nn.ReLU(inplace=True)
    if name == "silu":
        return lambda channels: nn.SiLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTS)}")


def get_attn(name: str, se_reduction: int = 16) -> Optional[AttnFactory]:
    """Channel-attention constructor `(channels) -> nn.Module` for "se" (reduced width
    `max(1, channels // se_reduction)`) or "eca"; None for "none"."""
    if name == "none":
        return None
    if name == "se":
        # Floor division, as in the released weights; the floor of 1 only matters for the narrow
        # (< se_reduction channels) test and demo models, where the width would otherwise be 0.
        return lambda channels: SqueezeExcite(channels, max(1, channels // se_reduction))
    if name == "eca":
        return lambda channels: EfficientChannelAttention(channels)
    raise ValueError(f"unknown attention {name!r}; expected one of {', '.join(ATTENTIONS)}")


def get_aa(anti_alias: bool) -> Optional[AAFactory]:
    """Anti-aliased downsampler constructor `(channels, stride) -> nn.Module`; None when disabled."""
    return (lambda channels, stride: BlurPool2d(channels, stride)) if anti_alias else None
