"""The configurable ResNet backbone: a stem, then stages of residual blocks, reporting `feature_info`.

With the defaults (block "ir_se", depth 50, stem "conv", PReLU) it is the ArcFace IR-SE-50 body used
by pSp: conv3x3 stem at full resolution, four stages whose first unit downsamples by 2. Every stem
leaves the stage outputs at strides 2, 4, 8, 16 of the input: a stem that already halves the image
takes over the first stage's downsampling, so heads built on `feature_info` see the same geometry.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from psp.models.nets.blocks import get_block
from psp.models.nets.layers import AAFactory, ActFactory, SpaceToDepth, get_aa, get_act, get_attn

# Units per stage. The IR presets are ArcFace's (two 3x3 convs per unit, extra units in stage 3);
# basic and bottleneck follow the torchvision ResNets.
DEPTH_PRESETS = {
    "ir": {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)},
    "basic": {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)},
    "bottleneck": {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)},
}
DEPTH_PRESETS["ir_se"] = DEPTH_PRESETS["ir"]
STEMS = ("conv", "deep", "space_to_depth")


def stage_layers(block: str, depth: int, layers: Optional[Sequence[int]] = None) -> list[int]:
    """Units per stage: `layers` when given, else the preset for (block, depth)."""
    if layers is not None:
        if not layers or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be a non-empty list of positive unit counts, got {list(layers)}")
        return [int(n) for n in layers]
    presets = DEPTH_PRESETS.get(block)
    if presets is None:
        raise ValueError(f"unknown block {block!r}; expected one of {', '.join(DEPTH_PRESETS)}")
    if depth not in presets:
        raise ValueError(f"no depth preset {depth} for block {block!r}; "
                         f"expected one of {sorted(presets)} or set layers")
    return list(presets[depth])


def resolve_attention(block: str, attention: str) -> str:
    """Attention actually used: "ir_se" means the IR unit with SE, so it accepts only "none"/"se"."""
    if block == "ir_se":
        if attention not in ("none", "se"):
            raise ValueError(f"block 'ir_se' already has SE attention; attention={attention!r} conflicts "
                             "(use block 'ir')")
        return "se"
    return attention


class ConvStem(nn.Module):
    """ArcFace input layer: conv3x3 (in->out, stride 1, no bias) -> BN -> act. [B,in,H,W] -> [B,out,H,W]."""

    reduction = 1
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_chs: int, out_chs: int, act: ActFactory, aa: Optional[AAFactory] = None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DeepStem(nn.Module):
    """Three 3x3 conv-BN-act layers (in -> out/2 -> out/2 -> out), the first halving the resolution
    (ResNet-D style). [B,in,H,W] -> [B,out,H/2,W/2]. Cheaper than the full-resolution conv stem
    because the first stage then runs at stride 1."""

    reduction = 2
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_chs: int, out_chs: int, act: ActFactory, aa: Optional[AAFactory] = None):
        super().__init__()
        mid = max(out_chs // 2, 1)
        self.conv1 = nn.Conv2d(in_chs, mid, 3, 1 if aa else 2, 1, bias=False)
        self.aa = aa(mid, 2) if aa else None
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act(mid)
        self.conv3 = nn.Conv2d(mid, out_chs, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act3 = act(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.aa is not None:
            x = self.aa(x)
        x = self.act1(self.bn1(x))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.act3(self.bn3(self.conv3(x)))


class SpaceToDepthStem(nn.Module):
    """TResNet-style stem: SpaceToDepth(2) -> conv3x3 (4*in -> out) -> BN -> act.
    [B,in,H,W] -> [B,out,H/2,W/2]; lossless downsampling, so no anti-aliasing is needed."""

    reduction = 2
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_chs: int, out_chs: int, act: ActFactory, aa: Optional[AAFactory] = None):
        super().__init__()
        self.space_to_depth = SpaceToDepth(2)
        self.conv = nn.Conv2d(in_chs * 4, out_chs, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.space_to_depth(x))))


def get_stem(name: str) -> type:
    """Stem class for "conv" | "deep" | "space_to_depth"."""
    stems = {"conv": ConvStem, "deep": DeepStem, "space_to_depth": SpaceToDepthStem}
    if name not in stems:
        raise ValueError(f"unknown stem {name!r}; expected one of {', '.join(STEMS)}")
    return stems[name]


class ResNet(nn.Module):
    """Configurable ResNet: x [B, in_chans, H, W] -> list of stage outputs, stage i being
    [B, feature_info[i]["num_chs"], H / r_i, W / r_i] with r_i = feature_info[i]["reduction"] = 2**(i+1).

    Args:
        block: "ir" | "ir_se" | "basic" | "bottleneck".
        depth: preset from DEPTH_PRESETS for the block (IR 50/100/152, basic 18/34, bottleneck 50/101/152).
        layers: units per stage; overrides `depth`.
        widths: base width per stage (output channels, times `expansion` for bottleneck blocks);
            widths[0] is also the stem width.
        attention: "none" | "se" | "eca" ("ir_se" implies "se").
        stem: "conv" | "deep" | "space_to_depth".
        anti_alias: blur-pool every downsampling (BlurPool2d).
        act: "prelu" | "relu" | "silu".
        expansion: bottleneck output / inner width.
        se_reduction: SE reduced width is channels // se_reduction.
        in_chans: input channels.

    Attributes:
        stem, stages (ModuleList of nn.Sequential of blocks), feature_info (list of dicts with
        num_chs, reduction, module), layers (units per stage).
    """

    def __init__(
        self,
        block: str = "ir_se",
        depth: int = 50,
        layers: Optional[Sequence[int]] = None,
        widths: Sequence[int] = (64, 128, 256, 512),
        attention: str = "none",
        stem: str = "conv",
        anti_alias: bool = False,
        act: str = "prelu",
        expansion: int = 4,
        se_reduction: int = 16,
        in_chans: int = 3,
    ):
        super().__init__()
        self.layers = stage_layers(block, depth, layers)
        if len(widths) != len(self.layers):
            raise ValueError(f"widths {list(widths)} and layers {self.layers} must have one entry per stage")
        block_cls = get_block(block)
        act_layer = get_act(act)
        attn_layer = get_attn(resolve_attention(block, attention), se_reduction)
        aa_layer = get_aa(anti_alias)
        widen = expansion if block == "bottleneck" else 1

        self.stem = get_stem(stem)(in_chans, widths[0], act_layer, aa_layer)
        self.stages = nn.ModuleList()
        self.feature_info = []
        in_chs, reduction = widths[0], self.stem.reduction
        for i, (n_units, width) in enumerate(zip(self.layers, widths)):
            out_chs = width * widen
            # Stage outputs sit at stride 2**(i+1) whatever the stem: a stem that already
            # downsampled takes the place of the first stage's stride.
            stride = 2 if reduction < 2 ** (i + 1) else 1
            units = []
            for j in range(n_units):
                unit_stride = stride if j == 0 else 1
                units.append(block_cls(in_chs, out_chs, unit_stride, act_layer, attn_layer, aa_layer, expansion))
                in_chs = out_chs
            reduction *= stride
            self.stages.append(nn.Sequential(*units))
            self.feature_info.append({"num_chs": out_chs, "reduction": reduction, "module": f"stages.{i}"})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
