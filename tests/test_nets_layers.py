"""psp.models.nets.layers: SE, ECA, BlurPool, SpaceToDepth and the string factories."""
import pytest
import torch
import torch.nn.functional as F

from psp.models.nets.layers import (
    BlurPool2d,
    EfficientChannelAttention,
    SpaceToDepth,
    SqueezeExcite,
    get_aa,
    get_act,
    get_attn,
)


def test_se_reduced_width_is_exactly_c_over_16_without_bias():
    se = get_attn("se")(64)
    assert isinstance(se, SqueezeExcite)
    assert se.fc1.weight.shape == (4, 64, 1, 1) and se.fc2.weight.shape == (64, 4, 1, 1)
    assert se.fc1.bias is None and se.fc2.bias is None
    # 72 // 16 = 4: floored, never rounded up (the released weights fix this shape).
    assert get_attn("se")(72).fc1.weight.shape[0] == 4
    assert get_attn("se", se_reduction=8)(64).fc1.weight.shape[0] == 8


def test_se_matches_definition_float64():
    se = SqueezeExcite(32, 2).double()
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    pooled = x.mean((2, 3))                                  # [B, C]
    hidden = torch.relu(pooled @ se.fc1.weight[:, :, 0, 0].T)
    gate = torch.sigmoid(hidden @ se.fc2.weight[:, :, 0, 0].T)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None], rtol=0, atol=1e-12)


def test_se_width_floor_for_narrow_models():
    assert get_attn("se")(8).fc1.weight.shape == (1, 8, 1, 1)
    with pytest.raises(ValueError, match="reduced width"):
        SqueezeExcite(8, 0)


def test_eca_shape_and_gate_range():
    eca = EfficientChannelAttention(64)
    assert eca.conv.kernel_size[0] % 2 == 1
    x = torch.rand(2, 64, 4, 4)
    y = eca(x)
    assert y.shape == x.shape and bool((y <= x).all()) and bool((y >= 0).all())


def test_blurpool_filter_is_not_persistent_and_keeps_constants():
    pool = BlurPool2d(3, 2)
    assert "filt" not in pool.state_dict()
    x = torch.full((1, 3, 8, 6), 2.5)
    y = pool(x)
    assert y.shape == (1, 3, 4, 3)
    torch.testing.assert_close(y, torch.full_like(y, 2.5))


def test_blurpool_matches_reflect_padded_binomial_filter():
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = (k[:, None] * k[None, :]) / 16
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k[None, None], stride=2)
    torch.testing.assert_close(BlurPool2d(1).double()(x), ref)


@pytest.mark.parametrize("block_size", [1, 2, 3, 4])
def test_space_to_depth_moves_each_patch_into_channels(block_size):
    b, c, h, w = 2, 3, 12, 24
    x = torch.randn(b, c, h, w)
    y = SpaceToDepth(block_size)(x)
    assert y.shape == (b, c * block_size**2, h // block_size, w // block_size)
    for r in range(block_size):
        for s in range(block_size):
            k = (r * block_size + s) * c
            torch.testing.assert_close(y[:, k:k + c], x[:, :, r::block_size, s::block_size], rtol=0, atol=0)


def test_space_to_depth_error_names_sizes():
    with pytest.raises(ValueError, match=r"divisible by 4, got 10x12"):
        SpaceToDepth(4)(torch.zeros(1, 3, 10, 12))


def test_space_to_depth_accepts_non_contiguous_input():
    x = torch.randn(1, 8, 8, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(SpaceToDepth(2)(x), SpaceToDepth(2)(x.contiguous()))


def test_factories():
    assert isinstance(get_act("prelu")(7), torch.nn.PReLU) and get_act("prelu")(7).weight.shape == (7,)
    assert isinstance(get_act("relu")(7), torch.nn.ReLU)
    assert isinstance(get_act("silu")(7), torch.nn.SiLU)
    assert get_attn("none") is None
    assert isinstance(get_attn("eca")(16), EfficientChannelAttention)
    assert get_aa(False) is None
    assert isinstance(get_aa(True)(4, 2), BlurPool2d)


@pytest.mark.parametrize("factory, name", [(get_act, "gelu"), (get_attn, "cbam")])
def test_factories_reject_unknown_names(factory, name):
    with pytest.raises(ValueError, match=name):
        factory(name)
