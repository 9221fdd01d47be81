"""The CPU inference rewrite (stylegan2.inference) against the specification generator, and the
specification's single code path through stylegan2.ops."""
import pytest
import torch

import stylegan2.layers
from stylegan2 import Generator, optimize_generator_for_inference
from stylegan2.inference import InferenceBlur, InferenceGenerator
from stylegan2.layers import Blur, StyledConv, ToRGB
from stylegan2.ops import upfirdn2d

DT = torch.float64
# (size, style_dim, n_mlp, channel_multiplier, channel_max): the smallest model, caps that make the
# upsampling convs change width, and the table's own step at 64 px (cm 1/16: 32 -> 16 channels).
CONFIGS = [(8, 8, 1, 2, 8), (32, 16, 2, 2, 12), (64, 8, 2, 0.0625, 32)]


def randomized(g: Generator) -> Generator:
    """Non-zero noise weights and biases, so every term of every layer shows in the output."""
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "activate.bias", "bias")) and "modulation" not in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return g


def make_pair(config, dtype):
    size, style_dim, n_mlp, cm, cap = config
    torch.manual_seed(sum(config[:4]))
    spec = randomized(Generator(size, style_dim, n_mlp, channel_multiplier=cm, channel_max=cap)).to(dtype).eval()
    return spec, optimize_generator_for_inference(spec)


def calls(g, dtype, batch):
    """Named generator calls covering the input kinds; each returns the image (seeded noise)."""
    style_dim, n_latent = g.style_dim, g.n_latent
    rng = torch.Generator().manual_seed(batch)
    z = torch.randn(batch, style_dim, generator=rng, dtype=dtype)
    z2 = torch.randn(batch, style_dim, generator=rng, dtype=dtype)
    w_plus = torch.randn(batch, n_latent, style_dim, generator=rng, dtype=dtype)
    noise = [torch.randn(1, 1, s.shape[-1], s.shape[-1], generator=rng, dtype=dtype)
             for s in g.make_noise()]
    centre = torch.randn(1, style_dim, generator=rng, dtype=dtype)

    def seeded(**kwargs):
        def run(model):
            torch.manual_seed(123)  # randomize_noise draws: the same stream for both models
            return model(**kwargs)[0]
        return run

    return {
        "w_plus_stored_noise": seeded(styles=[w_plus], input_is_latent=True, randomize_noise=False),
        "w_plus_random_noise": seeded(styles=[w_plus], input_is_latent=True),
        "z_truncated_given_noise": seeded(styles=[z], truncation=0.7, truncation_latent=centre, noise=noise),
        "z_mixing": seeded(styles=[z, z2], inject_index=2, randomize_noise=False),
    }


TOLERANCE = {DT: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("dtype", [DT, torch.float32])
@pytest.mark.parametrize("config", CONFIGS)
def test_inference_copy_equals_specification(config, dtype):
    spec, fast = make_pair(config, dtype)
    for batch in (1, 3):  # batch 1 takes other modulated-conv forms than batches
        for name, run in calls(spec, dtype, batch).items():
            with torch.inference_mode():
                expect = run(spec)
                got = run(fast)
            scale = expect.abs().max().item()
            tol = TOLERANCE[dtype]
            torch.testing.assert_close(got, expect, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                       msg=f"{name}, batch {batch}")
            assert got.is_contiguous() and got.dtype == dtype


@pytest.mark.parametrize("fused", [None, True, False])
def test_every_modconv_form_and_autograd_mode(fused):
    """The rewrite holds for each modulated-conv form, with autograd off (in-place tails) and on
    (channels-last and the depthwise blur only)."""
    spec, fast = make_pair(CONFIGS[1], DT)
    spec.fused_modconv = fast.fused_modconv = fused
    w_plus = torch.randn(2, spec.n_latent, spec.style_dim, dtype=DT)
    with torch.inference_mode():
        expect = spec([w_plus], input_is_latent=True, randomize_noise=False)[0]
        no_grad = fast([w_plus], input_is_latent=True, randomize_noise=False)[0]
    with_grad = fast([w_plus.clone().requires_grad_()], input_is_latent=True, randomize_noise=False)[0]
    torch.testing.assert_close(no_grad, expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(with_grad.detach(), expect, rtol=1e-12, atol=1e-12)


def test_copy_runs_channels_last_on_cpu_and_the_specification_does_not():
    spec, fast = make_pair(CONFIGS[1], torch.float32)
    layouts = {}
    for name, model in (("spec", spec), ("fast", fast)):
        hook = model.convs[0].register_forward_pre_hook(
            lambda m, args, name=name: layouts.__setitem__(
                name, args[0].is_contiguous(memory_format=torch.channels_last)))
        with torch.inference_mode():
            model([torch.randn(2, 16)], randomize_noise=False)
        hook.remove()
    assert layouts == {"spec": False, "fast": True}


def test_gradients_through_the_copy_equal_the_specification():
    """Refinement differentiates w.r.t. W+ and noise: the same gradients, none for the weights."""
    spec, fast = make_pair(CONFIGS[1], DT)
    w_plus = torch.randn(2, spec.n_latent, spec.style_dim, dtype=DT)
    noise = [n.expand(2, -1, -1, -1).clone() for n in spec.make_noise()]
    grads = []
    for model in (spec, fast):
        inputs = [w_plus.clone().requires_grad_()] + [n.clone().requires_grad_() for n in noise]
        image = model([inputs[0]], input_is_latent=True, noise=inputs[1:])[0]
        grads.append(torch.autograd.grad(image.square().sum(), inputs))
    for got, expect in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None and not p.requires_grad for p in fast.parameters())


def test_original_state_dict_untouched_and_copy_state_dict_identical():
    spec, _ = make_pair(CONFIGS[1], torch.float32)
    spec.train()
    before = {k: v.clone() for k, v in spec.state_dict().items()}
    fast = optimize_generator_for_inference(spec)
    after = spec.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # The original keeps its classes, its trainable parameters and its mode.
    assert type(spec) is Generator and spec.training
    assert all(type(m) in (Blur, StyledConv, ToRGB) for m in spec.modules()
               if isinstance(m, (Blur, StyledConv, ToRGB)))
    assert all(p.requires_grad for p in spec.parameters())
    # The copy: same names and values in its own storage, loadable into a plain Generator.
    copied = fast.state_dict()
    assert list(copied) == list(before)
    assert all(torch.equal(copied[k], before[k]) for k in before)
    assert all(copied[k].data_ptr() != after[k].data_ptr() for k in before)
    plain = Generator(32, 16, 2, channel_max=12)
    plain.load_state_dict(copied, strict=True)
    assert isinstance(fast, InferenceGenerator) and not fast.training
    # Changing the copy never reaches the original.
    with torch.no_grad():
        fast.conv1.activate.bias.add_(1)
    assert torch.equal(spec.conv1.activate.bias, before["conv1.activate.bias"])


def test_rewrite_is_idempotent_and_checks_its_input():
    spec, fast = make_pair(CONFIGS[0], DT)
    again = optimize_generator_for_inference(fast)
    w_plus = torch.randn(2, spec.n_latent, spec.style_dim, dtype=DT)
    with torch.inference_mode():
        torch.testing.assert_close(again([w_plus], input_is_latent=True, randomize_noise=False)[0],
                                   spec([w_plus], input_is_latent=True, randomize_noise=False)[0],
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="stylegan2.Generator, got Linear"):
        optimize_generator_for_inference(torch.nn.Linear(2, 2))


def test_inference_blur_equals_upfirdn2d():
    """The depthwise-conv blur (padding inside the call) is the same filter as the upfirdn2d
    reference op, on a channels-last input, and other pads fall back to upfirdn2d."""
    torch.manual_seed(3)
    for pad in ((1, 1), (2, 1)):
        blur = Blur([1, 3, 3, 1], pad=pad, upsample_factor=2)
        blur.__class__ = InferenceBlur
        x = torch.randn(2, 4, 11, 11, dtype=DT).contiguous(memory_format=torch.channels_last)
        expect = upfirdn2d(x, blur.kernel, pad=pad, impl="ref")
        torch.testing.assert_close(blur(x), expect, rtol=1e-12, atol=1e-12)


def test_conv_clamp_attribute_is_honoured():
    """With a ``conv_clamp`` (NVIDIA StyleGAN2-ADA's), StyledConv clamps after bias + lrelu + gain,
    ToRGB after its bias and before the skip is added."""
    spec, fast = make_pair(CONFIGS[1], DT)
    clamp = 0.4
    for model in (spec, fast):
        for module in model.modules():
            if isinstance(module, (StyledConv, ToRGB)):
                module.conv_clamp = clamp
    x = torch.randn(2, spec.channels[8], 8, 8, dtype=DT) * 3
    w = torch.randn(2, spec.style_dim, dtype=DT)
    noise = torch.randn(1, 1, 8, 8, dtype=DT)
    skip = torch.randn(2, 3, 4, 4, dtype=DT) * 3
    with torch.inference_mode():
        styled = fast.convs[1](x, w, noise=noise)
        rgb = fast.to_rgbs[0](x, w, skip)
        expect_styled = spec.convs[1](x, w, noise=noise).clamp(-clamp, clamp)
        layer = spec.to_rgbs[0]
        expect_rgb = (layer.conv(x, w) + layer.bias).clamp(-clamp, clamp) + layer.upsample(skip)
    assert (expect_styled.abs() == clamp).any() and (rgb.abs() > clamp).any()  # the clamp binds
    torch.testing.assert_close(styled, expect_styled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rgb, expect_rgb, rtol=1e-12, atol=1e-12)


def test_ref_impl_is_one_code_path(monkeypatch):
    """The specification generator calls the same ops, with impl="ref", in the same order, with
    autograd on and off, and gives bitwise the same image either way."""
    seen = []

    def recording(name, op):
        def wrapper(x, *args, **kwargs):
            seen.append((name, kwargs.get("impl"), tuple(x.shape)))
            return op(x, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(stylegan2.layers, "bias_act", recording("bias_act", stylegan2.layers.bias_act))
    monkeypatch.setattr(stylegan2.layers, "upfirdn2d", recording("upfirdn2d", stylegan2.layers.upfirdn2d))
    torch.manual_seed(4)
    g = randomized(Generator(32, 8, 2, channel_max=8, impl="ref")).eval()
    levels = len(g.to_rgbs)
    z = torch.randn(2, 8)
    runs = {}
    for mode, context in (("inference_mode", torch.inference_mode), ("no_grad", torch.no_grad),
                          ("grad", torch.enable_grad)):
        seen.clear()
        with context():
            image = g([z], randomize_noise=False)[0]
        runs[mode] = (list(seen), image.detach())
    sequence, image = runs["grad"]
    for mode, (other_sequence, other_image) in runs.items():
        assert other_sequence == sequence, mode
        assert torch.equal(other_image, image), mode
    assert all(impl == "ref" for _, impl, _ in sequence)
    names = [name for name, _, _ in sequence]
    # Mapping (n_mlp) and every StyledConv: bias_act; each level's blur and skip upsampling: upfirdn2d.
    assert names.count("bias_act") == 2 + 1 + 2 * levels
    assert names.count("upfirdn2d") == 2 * levels
