"""psp.models.nets.blocks / resnet / pyramid / fuse: every option combination on tiny inputs."""
import itertools

import pytest
import torch
from torch import nn

from psp.models.nets.blocks import IRBlock, Shortcut
from psp.models.nets.fuse import fuse_bn_for_inference, optimize_for_inference
from psp.models.nets.layers import get_attn
from psp.models.nets.pyramid import GradualStyleEncoder
from psp.models.nets.resnet import DEPTH_PRESETS, ResNet, stage_layers

BLOCKS = ("ir", "ir_se", "basic", "bottleneck")
ATTENTIONS = ("none", "se", "eca")
STEMS = ("conv", "deep", "space_to_depth")
ACTS = ("prelu", "relu", "silu")
# Every combination the config allows: ir_se already has SE, so it pairs only with none/se.
COMBOS = [c for c in itertools.product(BLOCKS, ATTENTIONS, STEMS, (False, True), ACTS)
          if not (c[0] == "ir_se" and c[1] == "eca")]




def tiny_backbone(block="ir_se", attention="none", stem="conv", anti_alias=False, act="prelu"):
    # widths 16..32 keep SE's c // 16 >= 1 and bottleneck inner widths >= 4.
    return ResNet(block=block, layers=[1, 1, 1, 1], widths=[16, 16, 32, 32], attention=attention,
                  stem=stem, anti_alias=anti_alias, act=act, expansion=2)


@pytest.mark.parametrize("block, attention, stem, anti_alias, act", COMBOS)
def test_every_option_combination_builds_runs_and_trains(block, attention, stem, anti_alias, act):
    encoder = GradualStyleEncoder(tiny_backbone(block, attention, stem, anti_alias, act),
                                  n_styles=8, style_dim=8, input_size=32)
    codes = encoder(torch.randn(1, 3, 32, 32))
    assert codes.shape == (1, 8, 8)
    codes.square().mean().backward()
    # A parameter outside the graph has grad None (and would break DDP). Zero values are allowed:
    # a 1-unit SE bottleneck behind a ReLU is legitimately dead for some inputs.
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("block", ["ir", "bottleneck"])
def test_feature_info_describes_the_stage_outputs(stem, block):
    backbone = tiny_backbone(block=block, stem=stem)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f["reduction"] for f in backbone.feature_info] == [2, 4, 8, 16]
    assert [f["module"] for f in backbone.feature_info] == [f"stages.{i}" for i in range(4)]
    modules = dict(backbone.named_modules())
    for feature, info in zip(features, backbone.feature_info):
        assert feature.shape[1:] == (info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
        assert info["module"] in modules


@pytest.mark.parametrize("block, depth, expected", [
    ("ir", 50, [3, 4, 14, 3]), ("ir_se", 100, [3, 13, 30, 3]), ("ir", 152, [3, 8, 36, 3]),
    ("basic", 34, [3, 4, 6, 3]), ("bottleneck", 50, [3, 4, 6, 3]),
])
def test_depth_presets(block, depth, expected):
    assert stage_layers(block, depth) == expected
    backbone = ResNet(block=block, depth=depth, widths=[16, 16, 16, 16], expansion=1)
    assert [len(stage) for stage in backbone.stages] == expected


def test_layers_override_depth():
    assert stage_layers("ir", 50, [1, 2, 1, 1]) == [1, 2, 1, 1]


@pytest.mark.parametrize("kwargs, match", [
    ({"block": "dense"}, "unknown block 'dense'"),
    ({"stem": "patchify"}, "unknown stem 'patchify'"),
    ({"act": "gelu"}, "unknown activation 'gelu'"),
    ({"block": "ir", "attention": "cbam"}, "unknown attention 'cbam'"),
    ({"block": "ir_se", "attention": "eca"}, "ir_se"),
    ({"block": "basic", "depth": 50}, "no depth preset 50 for block 'basic'"),
    ({"layers": [1, 1, 1]}, "one entry per stage"),
    ({"layers": [1, 0, 1, 1]}, "positive unit counts"),
])
def test_backbone_option_errors(kwargs, match):
    options = {"widths": [16, 16, 32, 32], **kwargs}
    with pytest.raises(ValueError, match=match):
        ResNet(**options)


def test_ir_unit_layout_follows_the_official_unit():
    """BN -> conv3x3 s1 -> PReLU -> conv3x3 stride s -> BN -> SE; shortcut MaxPool(1, s) or conv1x1 s + BN."""
    same = IRBlock(64, 64, 2, attn=get_attn("se"))
    assert isinstance(same.shortcut.pool, nn.MaxPool2d) and same.shortcut.conv is None
    assert same.conv1.stride == (1, 1) and same.conv2.stride == (2, 2) and same.conv1.bias is None
    assert same.attn.fc1.weight.shape == (4, 64, 1, 1)
    wider = IRBlock(64, 128, 2)
    assert wider.attn is None and wider.shortcut.pool is None
    assert wider.shortcut.conv.stride == (2, 2) and wider.shortcut.conv.bias is None
    assert isinstance(Shortcut(8, 8, 1, None).pool, type(None))
    # No activation after the add: a unit with zeroed residual is exactly its shortcut.
    unit = IRBlock(4, 4, 1).eval()
    nn.init.zeros_(unit.bn2.weight)
    nn.init.zeros_(unit.bn2.bias)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(unit(x), x)


def test_default_backbone_is_ir_se_50_with_official_strides():
    backbone = ResNet()
    assert backbone.layers == list(DEPTH_PRESETS["ir"][50])
    assert [f["num_chs"] for f in backbone.feature_info] == [64, 128, 256, 512]
    first_units = [stage[0] for stage in backbone.stages]
    assert all(unit.conv2.stride == (2, 2) for unit in first_units)
    assert all(unit.conv2.stride == (1, 1) for stage in backbone.stages for unit in list(stage)[1:])


def test_pyramid_style_blocks_match_psp_at_256():
    encoder = GradualStyleEncoder(tiny_backbone(), n_styles=18, style_dim=8, input_size=256)
    assert [len(s.convs) for s in encoder.styles] == [4] * 3 + [5] * 4 + [6] * 11
    assert all(conv.stride == (2, 2) and conv.kernel_size == (3, 3) for s in encoder.styles for conv in s.convs)
    assert encoder.lateral1.weight.shape == (32, 32, 1, 1) and encoder.lateral1.bias is not None
    assert encoder.lateral2.weight.shape == (32, 16, 1, 1)


def test_pyramid_omits_unused_laterals():
    assert GradualStyleEncoder(tiny_backbone(), n_styles=6, style_dim=8, input_size=32).lateral2 is None
    encoder = GradualStyleEncoder(tiny_backbone(), n_styles=3, style_dim=8, input_size=32)
    assert encoder.lateral1 is None and encoder(torch.randn(1, 3, 32, 32)).shape == (1, 3, 8)


def test_pyramid_rejects_other_input_sizes():
    encoder = GradualStyleEncoder(tiny_backbone(), n_styles=8, style_dim=8, input_size=32)
    with pytest.raises(ValueError, match=r"\[B, C, 32, 32\].*\[1, 3, 64, 64\]"):
        encoder(torch.randn(1, 3, 64, 64))


def _randomise_bn_statistics(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("block, stem, anti_alias", [
    ("ir_se", "conv", False), ("ir", "deep", True), ("basic", "space_to_depth", True), ("bottleneck", "deep", False),
])
def test_fuse_bn_for_inference_keeps_outputs(block, stem, anti_alias):
    encoder = GradualStyleEncoder(tiny_backbone(block, "none", stem, anti_alias, "prelu"),
                                  n_styles=8, style_dim=8, input_size=32)
    _randomise_bn_statistics(encoder)
    encoder.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = encoder(x)
        fuse_bn_for_inference(encoder)
        after = encoder(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    # Only the pre-activation BN of IR units (before a zero-padded conv) may remain.
    assert n_bn == (4 if block.startswith("ir") else 0)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_styles", [3, 8, 18])
def test_optimize_for_inference_keeps_outputs(n_styles):
    encoder = GradualStyleEncoder(tiny_backbone("ir_se"), n_styles=n_styles, style_dim=8, input_size=64)
    _randomise_bn_statistics(encoder)
    encoder.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = encoder(x)
        optimize_for_inference(encoder)
        after = encoder(x)
    assert encoder.styles is None and len(encoder.merged_styles) == min(3, 1 + (n_styles > 3) + (n_styles > 7))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
