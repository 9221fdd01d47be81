"""Generator structure (checkpoint keys), forward semantics and gradients, on tiny CPU models."""
import math

import pytest
import torch

from stylegan2 import Generator
from stylegan2.generator import channel_table

DT = torch.float64


def spec_state_shapes(size, style_dim=512, n_mlp=8, cm=2, channel_max=None):
    """rosinality's g_ema keys and shapes, written out from the documented facts (docs/design.md; independent of our code)."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
             512: 32 * cm, 1024: 16 * cm}
    ch = {r: c if channel_max is None else min(c, channel_max) for r, c in table.items()}
    shapes = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)
    shapes["input.input"] = (1, ch[4], 4, 4)

    def styled(prefix, cin, cout, up):
        shapes[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (cout,)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def to_rgb(prefix, cin, up):
        shapes[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)

    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    sides = [4] + [2 ** r for r in range(3, log_size + 1) for _ in range(2)]
    for k, side in enumerate(sides):
        shapes[f"noises.noise_{k}"] = (1, 1, side, side)
    for j, r in enumerate(range(3, log_size + 1)):
        styled(f"convs.{2 * j}", ch[2 ** (r - 1)], ch[2 ** r], True)
        styled(f"convs.{2 * j + 1}", ch[2 ** r], ch[2 ** r], False)
        to_rgb(f"to_rgbs.{j}", ch[2 ** r], True)
    return shapes


def layer_shapes(g):
    return {k: tuple(v.shape) for k, v in g.state_dict().items()}


@pytest.mark.parametrize("size,style_dim,n_mlp,cm,cap", [(16, 8, 2, 2, 8), (64, 8, 3, 1, 16),
                                                         (256, 4, 1, 2, 32)])
def test_state_dict_keys_and_shapes(size, style_dim, n_mlp, cm, cap):
    g = Generator(size, style_dim, n_mlp, channel_multiplier=cm, channel_max=cap)
    assert layer_shapes(g) == spec_state_shapes(size, style_dim, n_mlp, cm, cap)


def test_full_size_key_table_on_meta_device():
    """The real 1024 config-f layout (built on the meta device: shapes only, no memory)."""
    with torch.device("meta"):
        g = Generator(1024, 512, 8, channel_multiplier=2)
    expect = spec_state_shapes(1024)
    assert layer_shapes(g) == expect
    assert len(expect) == 16 + 1 + 5 + 4 + 17 + 16 * 5 + 8 + 8 * 5  # 171 tensors
    assert expect["noises.noise_16"] == (1, 1, 1024, 1024)
    assert expect["convs.14.conv.weight"] == (1, 32, 64, 3, 3)
    assert (g.n_latent, g.num_layers) == (18, 17)


def test_channel_table_defaults_to_rosinality():
    assert channel_table(1024, 2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256,
                                      256: 128, 512: 64, 1024: 32}
    assert channel_table(256, 1, channel_max=64) == {4: 64, 8: 64, 16: 64, 32: 64, 64: 64,
                                                     128: 64, 256: 64}


def test_blur_kernels_and_noises_are_persistent_buffers():
    g = Generator(16, 8, 1, channel_max=8)
    buffers = dict(g.named_buffers())
    assert set(buffers) == {k for k in g.state_dict() if k.endswith("kernel") or k.startswith("noises.")}
    expect = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64 * 4
    torch.testing.assert_close(buffers["convs.0.conv.blur.kernel"], expect)
    torch.testing.assert_close(buffers["to_rgbs.1.upsample.kernel"], expect)


def test_strict_round_trip_same_images():
    torch.manual_seed(0)
    a = Generator(32, 16, 2, channel_max=8).eval()
    b = Generator(32, 16, 2, channel_max=8).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(a([z], randomize_noise=False)[0], b([z], randomize_noise=False)[0])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    g = Generator(32, style_dim=16, n_mlp=2, channel_max=8).to(DT).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    return g


def modulation_inputs(g, run):
    """{layer name: the w it was modulated with} for one call of ``run()``."""
    seen, hooks = {}, []
    for name, module in g.named_modules():
        if name.endswith(".modulation"):
            layer = name[: -len(".conv.modulation")]
            hooks.append(module.register_forward_hook(
                lambda m, args, out, layer=layer: seen.__setitem__(layer, args[0].detach())))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_w_plus_row_use(tiny):
    """conv1 row 0, to_rgb1 row 1, level j: convs rows 2j+1, 2j+2, ToRGB row 2j+3."""
    w_plus = torch.randn(2, tiny.n_latent, 16, dtype=DT)
    seen = modulation_inputs(tiny, lambda: tiny([w_plus], input_is_latent=True, randomize_noise=False))
    expect_rows = {"conv1": 0, "to_rgb1": 1}
    for j in range(len(tiny.to_rgbs)):
        expect_rows.update({f"convs.{2 * j}": 2 * j + 1, f"convs.{2 * j + 1}": 2 * j + 2,
                            f"to_rgbs.{j}": 2 * j + 3})
    assert set(seen) == set(expect_rows)
    for layer, row in expect_rows.items():
        assert torch.equal(seen[layer], w_plus[:, row]), layer


def test_perturbing_one_row_changes_only_its_layers(tiny):
    w_plus = torch.randn(1, tiny.n_latent, 16, dtype=DT)
    base = modulation_inputs(tiny, lambda: tiny([w_plus], input_is_latent=True, randomize_noise=False))
    for row in range(tiny.n_latent):
        bumped = w_plus.clone()
        bumped[:, row] += 1
        seen = modulation_inputs(tiny, lambda: tiny([bumped], input_is_latent=True, randomize_noise=False))
        changed = {k for k in seen if not torch.equal(seen[k], base[k])}
        # Row r >= 1 feeds convs.{r-1}; an odd row also feeds the ToRGB before that conv.
        expect = {"conv1"} if row == 0 else {f"convs.{row - 1}"} & set(base)
        if row == 1:
            expect.add("to_rgb1")
        elif row % 2 == 1:
            expect.add(f"to_rgbs.{(row - 3) // 2}")
        assert changed == expect, row


def test_noise_order_and_buffer_sides(tiny):
    sides = [getattr(tiny.noises, f"noise_{k}").shape[-1] for k in range(tiny.num_layers)]
    assert sides == [2 ** ((k + 5) // 2) for k in range(tiny.num_layers)] == [4, 8, 8, 16, 16, 32, 32]
    order = ["conv1"] + [f"convs.{i}" for i in range(len(tiny.convs))]
    received = {}
    hooks = [getattr(tiny, name) if "." not in name else tiny.convs[int(name.split(".")[1])]
             for name in order]
    handles = [m.noise.register_forward_pre_hook(
        lambda m, args, kwargs, name=name: received.__setitem__(name, kwargs["noise"]), with_kwargs=True)
        for name, m in zip(order, hooks)]
    noise = [torch.randn(1, 1, s, s, dtype=DT) for s in sides]
    tiny([torch.randn(1, 16, dtype=DT)], noise=noise)
    for h in handles:
        h.remove()
    for k, name in enumerate(order):
        assert received[name] is noise[k], name


def test_randomize_noise(tiny):
    w = torch.randn(1, 16, dtype=DT)
    fixed = [tiny([w], input_is_latent=True, randomize_noise=False)[0] for _ in range(2)]
    assert torch.equal(*fixed)
    random = [tiny([w], input_is_latent=True)[0] for _ in range(2)]
    assert not torch.allclose(*random)


def test_style_mixing_truncation_and_return_latents(tiny):
    z1, z2 = torch.randn(2, 16, dtype=DT), torch.randn(2, 16, dtype=DT)
    w1, w2 = tiny.get_latent(z1), tiny.get_latent(z2)
    _, latent = tiny([z1, z2], inject_index=3, return_latents=True, randomize_noise=False)
    torch.testing.assert_close(latent[:, :3], w1[:, None].expand(-1, 3, -1))
    torch.testing.assert_close(latent[:, 3:], w2[:, None].expand(-1, tiny.n_latent - 3, -1))
    torch.manual_seed(7)
    for _ in range(5):  # random inject index in [1, n_latent - 1]
        _, latent = tiny([z1, z2], return_latents=True, randomize_noise=False)
        k = int((latent[0] == w1[0]).all(dim=1).sum())
        assert 1 <= k <= tiny.n_latent - 1
        torch.testing.assert_close(latent[:, k:], w2[:, None].expand(-1, tiny.n_latent - k, -1))
    assert tiny([z1], randomize_noise=False)[1] is None
    # Truncation towards a centre, applied to w before the W+ broadcast.
    centre = tiny.mean_latent(64)
    assert centre.shape == (1, 16)
    _, latent = tiny([z1], truncation=0.7, truncation_latent=centre, return_latents=True,
                     randomize_noise=False)
    torch.testing.assert_close(latent[:, 5], centre + 0.7 * (w1 - centre))
    # W+ inputs are used as given; mixing W+ codes takes each one's own rows.
    wp1, wp2 = torch.randn(2, 2, tiny.n_latent, 16, dtype=DT)
    _, latent = tiny([wp1], input_is_latent=True, return_latents=True)
    assert torch.equal(latent, wp1)
    _, latent = tiny([wp1, wp2], input_is_latent=True, inject_index=4, return_latents=True)
    assert torch.equal(latent, torch.cat([wp1[:, :4], wp2[:, 4:]], 1))


def test_user_errors_name_the_problem(tiny):
    w = torch.randn(1, 16, dtype=DT)
    with pytest.raises(ValueError, match=r"wrap it"):
        tiny(w)
    with pytest.raises(ValueError, match=r"one or two"):
        tiny([w, w, w])
    with pytest.raises(ValueError, match=r"\[B, 8, 16\]"):
        tiny([torch.randn(1, 5, 16, dtype=DT)], input_is_latent=True)
    with pytest.raises(ValueError, match=r"\[B, 16\] \(z\)"):
        tiny([torch.randn(1, 8, 16, dtype=DT)])
    with pytest.raises(ValueError, match="truncation_latent"):
        tiny([w], truncation=0.5)
    with pytest.raises(ValueError, match="7 maps"):
        tiny([w], noise=[None] * 3)
    with pytest.raises(ValueError, match="power of two"):
        Generator(48, 8, 1)
    with pytest.raises(ValueError, match="fused_modconv"):
        tiny.fused_modconv = "yes"


def test_gradient_reaches_every_w_plus_row(tiny):
    w_plus = torch.randn(2, tiny.n_latent, 16, dtype=DT, requires_grad=True)
    for fused in (None, True, False):
        tiny.fused_modconv = fused
        image, _ = tiny([w_plus], input_is_latent=True, randomize_noise=False)
        (grad,) = torch.autograd.grad(image.square().sum(), w_plus)
        assert torch.isfinite(grad).all()
        assert (grad.abs().sum(dim=(0, 2)) > 0).all()
    tiny.fused_modconv = None


def test_gradcheck_through_the_generator():
    torch.manual_seed(2)
    g = Generator(8, style_dim=4, n_mlp=1, channel_max=3).to(DT)
    w_plus = torch.randn(1, g.n_latent, 4, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w: g([w], input_is_latent=True, randomize_noise=False)[0], (w_plus,), fast_mode=True)


def test_fused_nonfused_identical_float64(tiny):
    w_plus = torch.randn(3, tiny.n_latent, 16, dtype=DT)
    images = []
    for fused in (None, True, False):
        tiny.fused_modconv = fused
        with torch.inference_mode():
            images.append(tiny([w_plus], input_is_latent=True, randomize_noise=False)[0])
    tiny.fused_modconv = None
    for other in images[1:]:
        torch.testing.assert_close(other, images[0], rtol=1e-10, atol=1e-10 * images[0].abs().max())


def test_batch_one_and_batch_results_agree():
    """Batch 1 takes other per-layer forms than batch > 1 (see ModulatedConv2d)."""
    torch.manual_seed(3)
    g = Generator(64, 8, 1, channel_max=16).to(DT).eval()
    w_plus = torch.randn(2, g.n_latent, 8, dtype=DT)
    with torch.inference_mode():
        both = g([w_plus], input_is_latent=True, randomize_noise=False)[0]
        one = g([w_plus[1:]], input_is_latent=True, randomize_noise=False)[0]
    torch.testing.assert_close(one[0], both[1], rtol=1e-10, atol=1e-12)


def test_float32_output_layout_and_eval_modes():
    g = Generator(16, 8, 1, channel_max=8).eval()
    w = torch.randn(2, 8)
    with torch.inference_mode():
        image, _ = g([w], input_is_latent=True, randomize_noise=False)
    assert image.shape == (2, 3, 16, 16) and image.dtype == torch.float32
    assert image.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(g([w], input_is_latent=True, randomize_noise=False)[0], image)
