"""The CUDA kernels' own source, executed on the CPU (csrc/emulation/cpu_emulation.h), against the
reference ops, forward and backward, through the same Python autograd code as on a GPU.

The emulated extension is compiled once per machine and source version (`stylegan2.ops.emulation`);
launches use 32 threads and at most 3 blocks, so every grid-stride loop wraps several times.
"""
import pytest
import torch

from stylegan2.ops import ACTIVATIONS, bias_act, build, emulation, impl, upfirdn2d
from stylegan2.ops import downsample2d, filter2d, setup_filter, upsample2d
from stylegan2.ops.bias_act import _BiasActCuda, _check_args

from test_ops_upfirdn2d import CASES

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Absolute tolerance per dtype, relative to the largest value compared (as the GPU tests).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def kernels():
    module = emulation.load()
    module.set_launch_shape(32, 3)
    return module


@pytest.fixture
def on_kernels(kernels, monkeypatch):
    """Route impl="cuda" / "auto" calls on CPU tensors to the emulated kernels, as a GPU with a
    successful build would."""
    monkeypatch.setattr(build, "load_plugin", lambda: kernels)
    monkeypatch.setattr(impl, "use_cuda", lambda op, choice, x: (choice or "auto") != "ref")
    yield kernels
    kernels.set_launch_shape(32, 3)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x (already in its dtype) contiguous, channels_last, or a truly strided view of a copy."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        view = wide[..., ::2]
        assert not view.is_contiguous()
        return view
    return x.contiguous()


# --- the execution model itself -------------------------------------------------------------------

def test_barrier_holds_every_thread_until_all_arrive(kernels):
    """Each thread reads its neighbour's shared-memory slot after __syncthreads(): threads run
    one after another (no real barrier) would read slots nobody has written yet."""
    blocks, threads = 3, 48
    got = kernels.barrier_selftest(blocks, threads)
    t = torch.arange(threads)
    expected = torch.stack([b * 1000 + (t + 1) % threads for b in range(blocks)])
    assert torch.equal(got, expected)


# --- bias_act ---------------------------------------------------------------------------------------

def _bias_act_case(dtype, act, layout, clamp, shape=(3, 6, 5, 7), dim=1):
    x = (torch.randn(shape, dtype=torch.float64) * 2).to(dtype)
    b = torch.randn(shape[dim], dtype=torch.float64).to(dtype)
    x_d = _layout(x, layout).requires_grad_(True)
    b_d = b.clone().requires_grad_(True)
    x_r, b_r = x.double().requires_grad_(True), b.double().requires_grad_(True)
    y = bias_act(x_d, b_d, dim=dim, act=act, clamp=clamp, impl="cuda")
    y_r = bias_act(x_r, b_r, dim=dim, act=act, clamp=clamp, impl="ref")
    scale = max(y_r.abs().max().item(), 1.0)
    tol = TOLERANCE[dtype]
    errors = []
    if y.dtype != dtype or not torch.allclose(y.double(), y_r, rtol=0, atol=tol * scale):
        errors.append(f"forward off by {(y.double() - y_r).abs().max().item():.3g}")
    dy = torch.randn(shape, dtype=torch.float64).to(dtype)
    dx, db = torch.autograd.grad(y, (x_d, b_d), dy)
    dx_r, db_r = torch.autograd.grad(y_r, (x_r, b_r), dy.double())
    if not torch.allclose(dx.double(), dx_r, rtol=0, atol=tol * 4 * scale):
        errors.append(f"dx off by {(dx.double() - dx_r).abs().max().item():.3g}")
    if db.shape != b.shape or not torch.allclose(
            db.double(), db_r, rtol=0, atol=tol * x.numel() / shape[dim] * scale):
        errors.append(f"db off (shape {tuple(db.shape)})")
    return errors


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("clamp", [None, 0.5, 0.9], ids=["no_clamp", "clamp_exact", "clamp_rounds"])
def test_bias_act_matches_ref(on_kernels, dtype, layout, clamp):
    """Every activation; clamp 0.5 is exact in fp16/bf16, 0.9 rounds down in both."""
    failures = {act: e for act in sorted(ACTIVATIONS) if (e := _bias_act_case(dtype, act, layout, clamp))}
    assert not failures, failures


@pytest.mark.parametrize("shape,dim", [((4, 3, 6), 2), ((6, 2), 0), ((3, 5, 2), -1), ((2, 7), 1)])
def test_bias_act_other_dims(on_kernels, shape, dim):
    for dtype in (torch.float16, torch.float64):
        failures = {act: e for act in ("lrelu", "swish", "tanh")
                    if (e := _bias_act_case(dtype, act, "contiguous", 1.1, shape, dim))}
        assert not failures, (dtype, failures)


def test_bias_act_1d_input(on_kernels):
    """A 1-D x with its bias along dim 0: the bias gradient is the gradient itself."""
    x = torch.randn(9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(9, dtype=torch.float64)
    y = bias_act(x, b, dim=0, act="lrelu", impl="cuda")
    dx, db = torch.autograd.grad(y, (x, b), dy)
    expected = torch.autograd.grad(bias_act(x, b, dim=0, act="lrelu", impl="ref"), (x, b), dy)
    assert db.shape == (9,)
    torch.testing.assert_close((dx, db), expected)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_bias_act_empty_batch(on_kernels, act):
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    y = bias_act(x, b, act=act, clamp=1.0 if act == "tanh" else None, impl="cuda")
    dx, db = torch.autograd.grad(y.sum(), (x, b))
    assert y.shape == dx.shape == (0, 3, 4, 4) and torch.equal(db, torch.zeros(3))


@pytest.mark.parametrize("dtype,clamp", [(torch.float16, 0.9), (torch.float16, 0.8),
                                         (torch.bfloat16, 0.9), (torch.float16, 0.5)])
def test_bias_act_clamp_mask_is_exact(on_kernels, dtype, clamp):
    """Elements at or beyond the clamp get no gradient (as torch.clamp's), every other one does;
    also for values that round onto the clamp in storage."""
    x = torch.linspace(-3 * clamp, 3 * clamp, 4001, dtype=torch.float64).to(dtype)
    x = torch.cat([x, torch.tensor([clamp, -clamp]).to(dtype)]).reshape(1, -1)
    x.requires_grad_(True)
    y = bias_act(x, None, act="linear", clamp=clamp, impl="cuda")
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    z = x.detach().float()
    clamped = (z >= clamp) | (z <= -clamp)
    assert torch.equal(dx == 0, clamped), int(((dx == 0) != clamped).sum())
    assert torch.equal(y, z.clamp(-clamp, clamp).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_act_rounds_once_like_the_device(on_kernels, dtype):
    """The forward computes in float and rounds once to nearest even when storing: bitwise the
    float32 reference rounded to the dtype (linear, relu and lrelu are exact in float)."""
    x = (torch.randn(4, 8, 3, 5) * 3).to(dtype)
    b = torch.randn(8).to(dtype)
    for act in ("linear", "relu", "lrelu"):
        for clamp in (None, 0.9, 2.0):
            got = bias_act(x, b, act=act, gain=1.7, clamp=clamp, impl="cuda")
            ref = bias_act(x.float(), b.float(), act=act, gain=1.7, clamp=clamp, impl="ref")
            assert torch.equal(got, ref.to(dtype)), (act, clamp)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 1.2])
def test_bias_act_second_order(on_kernels, act, clamp):
    x = torch.randn(2, 3, 2, dtype=torch.float64) * 2
    x = (x + 0.1 * x.sign()).requires_grad_(True)  # away from kinks (finite differences)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    if clamp is not None:  # away from the clamp's kinks too
        y = bias_act(x.detach(), None, act=act, gain=1.3, impl="ref")
        x.data[(y.abs() - clamp).abs() < 0.05] += 0.2
    p = _check_args(x, b, 1, act, None, 1.3, clamp)
    fn = lambda x, b: _BiasActCuda.apply(x, b, p)
    torch.testing.assert_close(fn(x, b), bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


def test_grid_stride_index_type_near_2_31(kernels):
    """int32 exactly when the loop counter cannot pass INT32_MAX: it reaches n - 1 + grid*block
    before the `i < n` test ends the loop."""
    for blocks, threads in [(65536, 256), (1, 32), (3, 32), (65536, 1024)]:
        stride = blocks * threads
        for n in [1, 2**20, 2**31 - stride - 1, 2**31 - stride, 2**31 - stride + 1, 2**31 - 1,
                  2**31, 2**31 + 5, 2**33]:
            no_wrap = n - 1 + stride <= INT32_MAX
            assert kernels.grid_stride_fits_int32(n, blocks, threads) is no_wrap, (n, blocks, threads)
    # The case of the 1024-px generator scale: 2^31 - 2^24 + 1 elements at 65536 x 256 wraps.
    assert not kernels.grid_stride_fits_int32(2**31 - 2**24 + 1, 65536, 256)


def test_upfirdn2d_index_type_near_2_31(kernels):
    fits = kernels.upfirdn2d_indices_fit_int32
    assert fits(1000, 2**20, 5000, 4096, 256)
    stride = 65536 * 256
    assert fits(1000, 2**31 - stride, 5000, 65536, 256)
    assert not fits(1000, 2**31 - stride + 1, 5000, 65536, 256)  # the output counter would wrap
    assert not fits(2**31, 1000, 5000, 4, 256)                    # input offsets
    assert not fits(1000, 1000, 2**31, 4, 256)                    # upsampled axis positions


# --- upfirdn2d --------------------------------------------------------------------------------------

def _upfirdn2d_errors(size, fsize, up, down, pad, layout, flip_filter):
    errors = []
    f = torch.randn(*fsize)  # float32, as setup_filter makes them
    for dtype in DTYPES:
        x = torch.randn(2, 5, *size, dtype=torch.float64).to(dtype)
        x_d = _layout(x, layout).requires_grad_(True)
        kw = dict(up=up, down=down, pad=pad, flip_filter=flip_filter, gain=1.5)
        y = upfirdn2d(x_d, f, impl="cuda", **kw)
        x_r = x.double().requires_grad_(True)
        y_r = upfirdn2d(x_r, f.double(), impl="ref", **kw)
        tol = TOLERANCE[dtype] * max(y_r.abs().max().item(), 1.0)
        if y.dtype != dtype or not torch.allclose(y.double(), y_r, rtol=0, atol=tol):
            errors.append(f"{dtype} forward off by {(y.double() - y_r).abs().max().item():.3g}")
        if (layout == "channels_last") != y.is_contiguous(memory_format=torch.channels_last) or \
                (layout == "contiguous" and not y.is_contiguous()):
            errors.append(f"{dtype} output layout")
        dy = torch.randn(y_r.shape, dtype=torch.float64).to(dtype)
        (dx,) = torch.autograd.grad(y, x_d, dy)
        (dx_r,) = torch.autograd.grad(y_r, x_r, dy.double())
        tol = TOLERANCE[dtype] * max(dx_r.abs().max().item(), 1.0)
        if not torch.allclose(dx.double(), dx_r, rtol=0, atol=tol):
            errors.append(f"{dtype} dx off by {(dx.double() - dx_r).abs().max().item():.3g}")
    return errors


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("size,fsize,up,down,pad", CASES)
def test_upfirdn2d_matches_ref(on_kernels, size, fsize, up, down, pad, layout):
    """All four dtypes, forward and backward (the backward is upfirdn2d with moved pads)."""
    errors = _upfirdn2d_errors(size, fsize, up, down, pad, layout, flip_filter=layout == "strided")
    assert not errors, errors


def test_upfirdn2d_filter_longer_than_block(on_kernels):
    """35 taps loaded into shared memory by 8 threads: the load loop runs five rounds."""
    on_kernels.set_launch_shape(8, 2)
    errors = _upfirdn2d_errors((9, 8), (7, 5), 2, 1, (3, 3, 2, 4), "contiguous", flip_filter=False)
    assert not errors, errors


def test_upfirdn2d_generator_calls(on_kernels):
    """The generator's and encoder's calls: Upsample (up 2, pads 2/1, gain 4), the blur after the
    transposed conv (pads 1/1), downsample2d and filter2d, at generator-like shapes."""
    f = setup_filter([1, 3, 3, 1])
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(2, 6, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
        tol = TOLERANCE[dtype] * 8
        for op in (lambda x, i: upsample2d(x, f, impl=i), lambda x, i: downsample2d(x, f, impl=i),
                   lambda x, i: filter2d(x, f, impl=i),
                   lambda x, i: upfirdn2d(x, f * 4, pad=(1, 1), impl=i),
                   lambda x, i: upfirdn2d(x, f * 4, up=2, pad=(2, 1), impl=i)):
            got = op(x, "cuda")
            expected = op(x.double(), "ref")
            torch.testing.assert_close(got.double(), expected, rtol=0, atol=tol)


def test_upfirdn2d_float32_filter_not_rounded_to_half(on_kernels):
    """The kernel multiplies in float: a float32 tap 1.0004 must not become fp16's 1.0 first."""
    x = torch.full((1, 1, 1, 1), 1000.0, dtype=torch.float16)
    f = torch.tensor([[1.0004]])
    y = upfirdn2d(x, f, impl="cuda")
    assert y.item() == (1000.0 * 1.0004 * torch.ones(1, dtype=torch.float64)).half().item() == 1000.5


def test_upfirdn2d_filter_over_tap_limit(on_kernels):
    """Over the kernel's shared-memory tap limit, auto falls back to ref; cuda says why."""
    side = int(on_kernels.upfirdn2d_max_taps() ** 0.5) + 1
    x = torch.randn(1, 1, side + 1, side + 1)
    f = torch.rand(side, side)
    torch.testing.assert_close(upfirdn2d(x, f, impl="auto"), upfirdn2d(x, f, impl="ref"))
    from stylegan2.ops.upfirdn2d import MAX_FILTER_TAPS
    assert MAX_FILTER_TAPS == on_kernels.upfirdn2d_max_taps()
    with pytest.raises(RuntimeError, match=rf"{side * side} taps.* {MAX_FILTER_TAPS}"):
        upfirdn2d(x, f, impl="cuda")
