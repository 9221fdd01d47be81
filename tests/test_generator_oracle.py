"""The generator against an independent float64 oracle written from the documented facts (docs/design.md).

The oracle below never calls conv2d, conv_transpose2d or our ops: convolutions are explicit sums of
shifted slices, upsampling is explicit zero insertion, padding is explicit. Each targeted test also
checks that the oracle with the fact changed (another pad, no epsilon, ...) would have failed, so
the test really pins that fact.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from stylegan2 import Generator, optimize_generator_for_inference
from stylegan2.layers import EqualLinear, ModulatedConv2d, ToRGB
from stylegan2.ops import upfirdn2d

DT = torch.float64
BLUR = torch.outer(torch.tensor([1.0, 3, 3, 1], dtype=DT), torch.tensor([1.0, 3, 3, 1], dtype=DT)) / 64


# --------------------------------------------------------------------------------------------
# Oracle

def o_correlate(x, w):
    """Valid cross-correlation: x [B, I, H, W], per-sample w [B, O, I, kh, kw] -> [B, O, H-kh+1, W-kw+1]."""
    kh, kw = w.shape[-2:]
    out_h, out_w = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = x.new_zeros(x.shape[0], w.shape[1], out_h, out_w)
    for dy in range(kh):
        for dx in range(kw):
            out += torch.einsum("bihw,boi->bohw", x[:, :, dy:dy + out_h, dx:dx + out_w], w[..., dy, dx])
    return out


def o_pad(x, p0, p1):
    """Zero padding of both spatial axes: p0 before, p1 after."""
    h, w = x.shape[2:]
    out = x.new_zeros(*x.shape[:2], h + p0 + p1, w + p0 + p1)
    out[:, :, p0:p0 + h, p0:p0 + w] = x
    return out


def o_zero_insert(x, trailing):
    """Insert a zero after every sample (and keep the trailing one when `trailing`)."""
    h, w = x.shape[2:]
    n_h, n_w = (2 * h, 2 * w) if trailing else (2 * h - 1, 2 * w - 1)
    out = x.new_zeros(*x.shape[:2], n_h, n_w)
    out[:, :, ::2, ::2] = x
    return out


def o_depthwise(x, kernel):
    """True convolution (valid) of every channel with the 2-D kernel."""
    channels = x.shape[1]
    w = torch.zeros(1, channels, channels, *kernel.shape, dtype=x.dtype)
    w[0, range(channels), range(channels)] = kernel.flip([0, 1])
    return o_correlate(x, w)


def o_linear(x, weight, bias, lr_mul, act):
    out = x @ (weight * lr_mul / math.sqrt(weight.shape[1])).T + bias * lr_mul
    return o_lrelu(out) if act else out


def o_lrelu(x):
    return torch.where(x >= 0, x, 0.2 * x) * math.sqrt(2)


def o_modconv(x, sd, prefix, w, demodulate=True, upsample=False, eps=1e-8, blur_pad=(1, 1)):
    weight = sd[f"{prefix}.weight"][0]  # [O, I, k, k]
    k = weight.shape[-1]
    s = o_linear(w, sd[f"{prefix}.modulation.weight"], sd[f"{prefix}.modulation.bias"], 1, False)
    wb = weight[None] / math.sqrt(weight.shape[1] * k * k) * s[:, None, :, None, None]
    if demodulate:
        wb = wb / torch.sqrt(wb.square().sum(dim=[2, 3, 4], keepdim=True) + eps)
    if not upsample:
        return o_correlate(o_pad(x, k // 2, k // 2), wb)
    # Transposed conv, stride 2 = zero insertion, full correlation with the flipped kernel.
    up = o_correlate(o_pad(o_zero_insert(x, trailing=False), k - 1, k - 1), wb.flip([3, 4]))
    return o_depthwise(o_pad(up, *blur_pad), BLUR * 4)


def o_skip_up(skip, pad=(2, 1)):
    """upfirdn2d(up=2, kernel BLUR*4, pad): zero insertion, pad, true convolution."""
    return o_depthwise(o_pad(o_zero_insert(skip, trailing=True), *pad), BLUR * 4)


def o_styled(x, sd, prefix, w, noise, upsample=False):
    out = o_modconv(x, sd, f"{prefix}.conv", w, upsample=upsample)
    out = out + sd[f"{prefix}.noise.weight"] * noise
    return o_lrelu(out + sd[f"{prefix}.activate.bias"][None, :, None, None])


def o_to_rgb(x, sd, prefix, w, skip):
    out = o_modconv(x, sd, f"{prefix}.conv", w, demodulate=False) + sd[f"{prefix}.bias"]
    return out if skip is None else out + o_skip_up(skip)


def o_mapping(z, sd, n_mlp, lr_mul=0.01):
    w = z / torch.sqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        w = o_linear(w, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], lr_mul, True)
    return w


def o_synthesis(w_plus, sd, n_levels, noises):
    """SPEC W+ row use: conv1 row 0, to_rgb1 row 1, level j rows 2j+1, 2j+2, its ToRGB 2j+3."""
    x = sd["input.input"].expand(w_plus.shape[0], -1, -1, -1)
    x = o_styled(x, sd, "conv1", w_plus[:, 0], noises[0])
    skip = o_to_rgb(x, sd, "to_rgb1", w_plus[:, 1], None)
    for j in range(n_levels):
        x = o_styled(x, sd, f"convs.{2 * j}", w_plus[:, 2 * j + 1], noises[2 * j + 1], upsample=True)
        x = o_styled(x, sd, f"convs.{2 * j + 1}", w_plus[:, 2 * j + 2], noises[2 * j + 2])
        skip = o_to_rgb(x, sd, f"to_rgbs.{j}", w_plus[:, 2 * j + 3], skip)
    return skip


# --------------------------------------------------------------------------------------------

def randomized(g: Generator) -> Generator:
    """Non-zero noise weights and biases, so every term of every layer shows in the output."""
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "activate.bias", "bias")) and "modulation" not in name:
                p.copy_(torch.randn_like(p) * 0.3)
            elif name.endswith("modulation.bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return g


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return randomized(Generator(32, style_dim=16, n_mlp=2, channel_max=8).to(DT).eval())


def sd64(g):
    return {k: v.detach() for k, v in g.state_dict().items()}


@pytest.mark.parametrize("form", ["specification", "inference"])
@pytest.mark.parametrize("fused", [None, True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_forward_matches_oracle(tiny, fused, grad, form):
    """The specification and its CPU inference rewrite (stylegan2.inference), autograd on and off."""
    model = tiny if form == "specification" else optimize_generator_for_inference(tiny)
    model.fused_modconv = fused
    torch.manual_seed(2)
    z = torch.randn(2, 16, dtype=DT)
    w_plus = o_mapping(z, sd64(tiny), 2).unsqueeze(1).repeat(1, tiny.n_latent, 1)
    w_plus = w_plus + 0.3 * torch.randn_like(w_plus)  # distinct rows
    noises = [getattr(tiny.noises, f"noise_{i}") for i in range(tiny.num_layers)]
    expect = o_synthesis(w_plus, sd64(tiny), len(tiny.to_rgbs), noises)
    with torch.set_grad_enabled(grad):
        image, latent = model([w_plus], input_is_latent=True, randomize_noise=False, return_latents=True)
    tiny.fused_modconv = None
    torch.testing.assert_close(image, expect, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(latent, w_plus)


def test_mapping_matches_oracle(tiny):
    z = torch.randn(3, 16, dtype=DT)
    torch.testing.assert_close(tiny.get_latent(z), o_mapping(z, sd64(tiny), 2), rtol=1e-12, atol=1e-12)
    # The stored mapping weights act 1/lr_mul = 100x smaller than they read.
    assert not torch.allclose(tiny.get_latent(z), o_mapping(z, sd64(tiny), 2, lr_mul=1.0))


def test_z_input_uses_mapping(tiny):
    z = torch.randn(2, 16, dtype=DT)
    w = o_mapping(z, sd64(tiny), 2)
    a, _ = tiny([z], randomize_noise=False)
    b, _ = tiny([w], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", [None, "fused_lrelu"])
def test_equal_linear_lr_mul(activation):
    layer = EqualLinear(6, 5, bias_init=0.5, lr_mul=0.01, activation=activation).to(DT)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(5, dtype=DT) * 30)
    x = torch.randn(4, 6, dtype=DT)
    expect = x @ (layer.weight * 0.01 / math.sqrt(6)).T + layer.bias * 0.01
    if activation:
        expect = torch.nn.functional.leaky_relu(expect, 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x), expect, rtol=1e-12, atol=1e-12)
    # Initialisation: weight N(0, 1/lr_mul^2), bias = bias_init.
    assert 50 < EqualLinear(64, 64, lr_mul=0.01).weight.std() < 200
    assert torch.all(EqualLinear(3, 4, bias_init=1).bias == 1)


def test_demodulation_epsilon():
    """rsqrt(sum w^2 + 1e-8): with sum w^2 = 1e-8 the epsilon halves the squared gain."""
    conv = ModulatedConv2d(2, 3, 3, style_dim=4).to(DT)
    with torch.no_grad():
        conv.modulation.weight.zero_()  # styles = bias = 1
        conv.weight.fill_(1.0)
        # modulated weight = scale * weight = 1/sqrt(18) each; sum over 18 taps = 1; rescale to 1e-8.
        conv.weight.mul_(1e-4)
    x = torch.randn(1, 2, 5, 5, dtype=DT)
    w = torch.randn(1, 4, dtype=DT)
    sd = {"c.weight": conv.weight, "c.modulation.weight": conv.modulation.weight,
          "c.modulation.bias": conv.modulation.bias}
    for fused in (True, False):
        conv.fused_modconv = fused
        out = conv(x, w).detach()
        torch.testing.assert_close(out, o_modconv(x, sd, "c", w), rtol=1e-10, atol=0)
        assert not torch.allclose(out, o_modconv(x, sd, "c", w, eps=0.0), rtol=1e-3)
        assert not torch.allclose(out, o_modconv(x, sd, "c", w, eps=1e-5), rtol=1e-3)


def test_upsampling_conv_blur_pad_and_flip():
    """Transposed conv with the flipped kernel, then the x4 blur with pad (1, 1)."""
    torch.manual_seed(3)
    conv = ModulatedConv2d(3, 2, 3, style_dim=4, upsample=True).to(DT)
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    w = torch.randn(2, 4, dtype=DT)
    sd = {f"c.{k}": v.detach() for k, v in conv.state_dict().items()}
    expect = o_modconv(x, sd, "c", w, upsample=True)
    for fused in (True, False):
        conv.fused_modconv = fused
        out = conv(x, w).detach()
        assert out.shape == (2, 2, 10, 10)
        torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-12)
    # Either fact changed gives another answer (the kernel is not symmetric, the pads matter).
    assert not torch.allclose(out, o_modconv(x, sd, "c", w, upsample=True, blur_pad=(2, 0)))
    wrong = dict(sd)
    wrong["c.weight"] = sd["c.weight"].flip([3, 4])
    assert not torch.allclose(out, o_modconv(x, wrong, "c", w, upsample=True))
    torch.testing.assert_close(conv.blur.kernel, BLUR * 4)


def test_to_rgb_skip_upsample_pad_2_1():
    torch.manual_seed(4)
    layer = ToRGB(4, style_dim=4).to(DT)
    skip = torch.randn(1, 3, 6, 6, dtype=DT)
    up = layer.upsample(skip)
    torch.testing.assert_close(up, o_skip_up(skip, (2, 1)), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(up, o_skip_up(skip, (1, 2)))
    torch.testing.assert_close(layer.upsample.kernel, BLUR * 4)


def test_noise_enters_before_activation_with_scalar_weight(tiny):
    """StyledConv: conv, then + weight * noise, then bias + lrelu: noise is inside the lrelu."""
    torch.manual_seed(5)
    layer = tiny.conv1
    x = torch.randn(2, 8, 4, 4, dtype=DT)
    w = torch.randn(2, 16, dtype=DT)
    noise = torch.randn(1, 1, 4, 4, dtype=DT)
    sd = {f"c.{k}": v.detach() for k, v in layer.state_dict().items()}
    expect = o_styled(x, sd, "c", w, noise)
    torch.testing.assert_close(layer(x, w, noise=noise), expect, rtol=1e-10, atol=1e-12)
    conv_out = o_modconv(x, sd, "c.conv", w)
    after = o_lrelu(conv_out + sd["c.activate.bias"][None, :, None, None]) + sd["c.noise.weight"] * noise
    assert not torch.allclose(expect, after)
    # Per-sample noise [B, 1, H, W] is accepted too.
    per_sample = torch.randn(2, 1, 4, 4, dtype=DT)
    torch.testing.assert_close(layer(x, w, noise=per_sample), o_styled(x, sd, "c", w, per_sample))


def test_inference_tails_match_the_specification_ops(tiny):
    """With autograd on, the specification's tails go through stylegan2.ops; the inference copy
    with autograd off runs them in place: same numbers."""
    w_plus = torch.randn(2, tiny.n_latent, 16, dtype=DT)
    fast = optimize_generator_for_inference(tiny)
    with torch.inference_mode():
        a, _ = fast([w_plus], input_is_latent=True, randomize_noise=False)
    b, _ = tiny([w_plus.requires_grad_()], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


def test_upfirdn_pad_conventions_smoke():
    """Guard on the op contract we rely on: up 2 with pad (2, 1) keeps the size exactly 2x."""
    x = torch.randn(1, 3, 7, 7)
    assert upfirdn2d(x, torch.ones(4, 4) / 16, up=2, pad=(2, 1)).shape == (1, 3, 14, 14)
    assert F.pad(x, (1, 1, 1, 1)).shape == (1, 3, 9, 9)
