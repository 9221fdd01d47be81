"""Residual blocks with one constructor signature.

Every block is `Block(in_chs, out_chs, stride=1, act=..., attn=None, aa=None, expansion=4)` where
`act`, `attn` and `aa` are the layer constructors made by `psp.models.nets.layers.get_act/get_attn/get_aa`,
and maps x [B, in_chs, H, W] -> [B, out_chs, H/stride, W/stride]. `expansion` is the ratio of output
to inner width of the bottleneck block; the other blocks have no inner width and ignore it.

`conv_bn_pairs` lists (conv, batchnorm) attribute pairs that `psp.models.nets.fuse.fuse_bn_for_inference`
may fold. At most a blur pool sits between them, which is linear, per channel, and maps a constant
map to itself, so folding the BN shift into the conv bias stays exact.
"""
from typing import Optional

import torch
from torch import nn

from psp.models.nets.layers import AAFactory, ActFactory, AttnFactory, get_act


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)


def _downsample_parts(
    in_chs: int, out_chs: int, stride: int, aa: Optional[AAFactory]
) -> tuple[nn.Conv2d, Optional[nn.Module]]:
    """A 3x3 conv that downsamples by `stride`, and the anti-aliasing pool that follows it (or None).

    With anti-aliasing the conv runs at stride 1 and a blur pool subsamples, so the sampling grid
    stays aliasing-free; the pool is kept as its own attribute so parameter names do not change.
    """
    if stride == 1 or aa is None:
        return _conv3x3(in_chs, out_chs, stride), None
    return _conv3x3(in_chs, out_chs, 1), aa(out_chs, stride)


class Shortcut(nn.Module):
    """The skip path of a residual block: x [B, in_chs, H, W] -> [B, out_chs, H/stride, W/stride].

    - in == out, stride 1: identity.
    - in == out, stride s: subsampling by `MaxPool2d(1, s)` (ArcFace's IR unit; it simply keeps every
      s-th pixel), or a blur pool with anti-aliasing.
    - in != out: conv1x1 (stride s, no bias) -> BN; with anti-aliasing the blur pool subsamples first
      and the conv runs at stride 1.
    """

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_chs: int, out_chs: int, stride: int, aa: Optional[AAFactory]):
        super().__init__()
        self.pool = None
        self.conv = None
        self.bn = None
        conv_stride = stride
        if stride != 1:
            if aa is not None:
                self.pool = aa(in_chs, stride)
                conv_stride = 1
            elif in_chs == out_chs:
                self.pool = nn.MaxPool2d(1, stride)
        if in_chs != out_chs:
            self.conv = nn.Conv2d(in_chs, out_chs, 1, conv_stride, bias=False)
            self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.conv is not None:
            x = self.bn(self.conv(x))
        return x


class IRBlock(nn.Module):
    """ArcFace "improved residual" unit (`ir`; `ir_se` is this with an SE `attn`).

    residual = BN(in) -> conv3x3(in->out) -> act(out) -> conv3x3(out->out, stride) -> BN(out) [-> attn]
    output = residual + Shortcut(x), with no activation after the add (as in the released weights).
    """

    conv_bn_pairs = (("conv2", "bn2"),)

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        act: ActFactory = get_act("prelu"),
        attn: Optional[AttnFactory] = None,
        aa: Optional[AAFactory] = None,
        expansion: int = 4,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = _conv3x3(in_chs, out_chs)
        self.act1 = act(out_chs)
        self.conv2, self.aa = _downsample_parts(out_chs, out_chs, stride, aa)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.attn = attn(out_chs) if attn is not None else None
        self.shortcut = Shortcut(in_chs, out_chs, stride, aa)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act1(self.conv1(self.bn1(x))))
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn2(out)
        if self.attn is not None:
            out = self.attn(out)
        return out + self.shortcut(x)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: conv3x3(stride) -> BN -> act -> conv3x3 -> BN [-> attn], add, act."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        act: ActFactory = get_act("relu"),
        attn: Optional[AttnFactory] = None,
        aa: Optional[AAFactory] = None,
        expansion: int = 4,
    ):
        super().__init__()
        self.conv1, self.aa = _downsample_parts(in_chs, out_chs, stride, aa)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = act(out_chs)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.attn = attn(out_chs) if attn is not None else None
        self.shortcut = Shortcut(in_chs, out_chs, stride, aa)
        self.act2 = act(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn2(self.conv2(self.act1(self.bn1(out))))
        if self.attn is not None:
            out = self.attn(out)
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet-50+ block: conv1x1 -> BN -> act -> conv3x3(stride) -> BN -> act -> conv1x1 -> BN
    [-> attn], add, act. Inner width is out_chs // expansion."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        act: ActFactory = get_act("relu"),
        attn: Optional[AttnFactory] = None,
        aa: Optional[AAFactory] = None,
        expansion: int = 4,
    ):
        super().__init__()
        if expansion < 1 or out_chs % expansion:
            raise ValueError(f"bottleneck out_chs={out_chs} must be a multiple of expansion={expansion}")
        mid = out_chs // expansion
        self.conv1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act(mid)
        self.conv2, self.aa = _downsample_parts(mid, mid, stride, aa)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act(mid)
        self.conv3 = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.attn = attn(out_chs) if attn is not None else None
        self.shortcut = Shortcut(in_chs, out_chs, stride, aa)
        self.act3 = act(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.aa is not None:
            out = self.aa(out)
        out = self.act2(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.act3(out + self.shortcut(x))


# `ir_se` is the IR unit whose attention is SE; resnet.py resolves that pairing.
BLOCKS = {"ir": IRBlock, "ir_se": IRBlock, "basic": BasicBlock, "bottleneck": Bottleneck}


def get_block(name: str) -> type:
    """Block class for "ir" | "ir_se" | "basic" | "bottleneck"."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; expected one of {', '.join(BLOCKS)}")
    return BLOCKS[name]
