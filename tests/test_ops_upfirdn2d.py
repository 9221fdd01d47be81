"""upfirdn2d: the reference op against a float64 oracle written from the definition."""
import numpy as np
import pytest
import torch

from stylegan2.ops import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d


def oracle(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """scipy.signal.upfirdn in 2-D, literally: zero insertion, zero padding / cropping,
    a direct convolution sum over every output position, then decimation."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64) * gain
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * uy, w * ux))
    for i in range(h):
        for j in range(w):
            z[:, :, i * uy, j * ux] = x[:, :, i, j]
    hp, wp = h * uy + py0 + py1, w * ux + px0 + px1
    zp = np.zeros((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            si, sj = i - py0, j - px0
            if 0 <= si < h * uy and 0 <= sj < w * ux:
                zp[:, :, i, j] = z[:, :, si, sj]
    fh, fw = f.shape
    full = np.zeros((n, c, hp - fh + 1, wp - fw + 1))
    for i in range(full.shape[2]):
        for j in range(full.shape[3]):
            for a in range(fh):
                for b in range(fw):
                    # convolution: output (i, j) pairs tap (a, b) with sample (i + fh-1-a, j + fw-1-b)
                    ka, kb = (a, b) if flip_filter else (fh - 1 - a, fw - 1 - b)
                    full[:, :, i, j] += zp[:, :, i + a, j + b] * f[ka, kb]
    return torch.from_numpy(full[:, :, ::dy, ::dx].copy())


# (input H, W), filter (fh, fw), up, down, pad
CASES = [
    ((5, 7), (3, 4), 1, 1, 0),
    ((5, 7), (4, 4), 2, 1, (2, 1)),                 # rosinality Upsample
    ((6, 6), (4, 4), 1, 2, (1, 1)),                 # rosinality Downsample
    ((4, 5), (4, 4), 1, 1, (1, 1)),                 # blur after the transposed conv
    ((3, 5), (2, 3), (2, 1), (1, 2), (1, -2, 3, 0)),
    ((3, 4), (5, 3), 4, 2, (3, -1, 0, 2)),
    ((9, 8), (4, 5), 1, (2, 4), (-1, 2, 1, 1)),
    ((7, 3), (1, 1), 2, 2, (-1, -1, 0, 0)),
    ((4, 4), (3, 3), 4, 4, (2, 2)),
    ((5, 6), (4, 2), 2, 1, (-3, -2, -1, -4)),       # crop more than the filter overlaps
]


@pytest.mark.parametrize("flip_filter", [False, True])
@pytest.mark.parametrize("size,fsize,up,down,pad", CASES)
def test_matches_oracle(size, fsize, up, down, pad, flip_filter):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    f = torch.randn(*fsize, dtype=torch.float64)  # non-symmetric: catches flip errors
    pair = lambda v: (v, v) if isinstance(v, int) else v
    pads = {int: lambda p: (p,) * 4, 2: lambda p: (p[0], p[1], p[0], p[1]), 4: tuple}
    pad4 = pads[int](pad) if isinstance(pad, int) else pads[len(pad)](pad)
    y = upfirdn2d(x, f, up=up, down=down, pad=pad, flip_filter=flip_filter, gain=1.5, impl="ref")
    expected = oracle(x, f, pair(up), pair(down), pad4, flip_filter, 1.5)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_output_size_formula():
    x = torch.randn(1, 1, 11, 6)
    y = upfirdn2d(x, torch.ones(3, 2), up=(3, 2), down=(2, 5), pad=(1, 4, 2, -1))
    assert y.shape[2:] == ((11 * 2 + 2 - 1 - 3) // 5 + 1, (6 * 3 + 1 + 4 - 2) // 2 + 1)


def test_identity_filter_and_pure_padding():
    x = torch.randn(1, 2, 4, 5)
    torch.testing.assert_close(upfirdn2d(x, None, pad=(1, -2, 0, 3)),
                               torch.nn.functional.pad(x, [1, -2, 0, 3]))


@pytest.mark.parametrize("layout", ["channels_last", "strided", "transposed"])
def test_layouts(layout):
    base = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    x = {"channels_last": base.contiguous(memory_format=torch.channels_last),
         "strided": torch.randn(2, 8, 7, 12, dtype=torch.float64)[:, ::2, :, ::2],
         "transposed": torch.randn(2, 4, 6, 7, dtype=torch.float64).transpose(2, 3)}[layout]
    f = torch.randn(3, 4, dtype=torch.float64)
    for kw in [dict(up=2, pad=(2, 1)), dict(down=2, pad=1), dict(pad=(1, 2, 0, 1))]:
        y = upfirdn2d(x, f, **kw)
        torch.testing.assert_close(y, upfirdn2d(x.contiguous(), f, **kw), rtol=1e-12, atol=1e-12)


def test_float32_filter_on_float64_input_and_dtype_kept():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1])
    y = upfirdn2d(x, f, up=2, pad=(2, 1))
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, oracle(x, f.double(), (2, 2), (1, 1), (2, 1, 2, 1)))


def test_setup_filter():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert setup_filter(None).tolist() == [[1.0]]
    g = setup_filter([[1, 2], [3, 4]], flip=True, gain=2)
    torch.testing.assert_close(g, torch.tensor([[4., 3], [2, 1]]) / 10 * 2)
    assert setup_filter([[1, -1]], normalize=False).tolist() == [[1.0, -1.0]]
    with pytest.raises(ValueError, match="sum to 0"):
        setup_filter([1, -1])
    with pytest.raises(ValueError, match="shape"):
        setup_filter(np.ones((2, 2, 2)))


def test_helpers_match_rosinality_layers():
    """Upsample/Downsample/Blur of rosinality's model.py, as upfirdn2d calls."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    torch.testing.assert_close(upsample2d(x, f), upfirdn2d(x, f * 4, up=2, pad=(2, 1)))
    torch.testing.assert_close(downsample2d(x, f), upfirdn2d(x, f, down=2, pad=(1, 1)))
    torch.testing.assert_close(filter2d(x, f), upfirdn2d(x, f, pad=(2, 1)))
    assert upsample2d(x, f).shape[2:] == (16, 16)
    assert downsample2d(x, f).shape[2:] == (4, 4)
    assert filter2d(x, f, pad=1).shape[2:] == (10, 10)
    assert upsample2d(x, setup_filter([1, 2, 1]), up=(2, 4)).shape[2:] == (32, 16)


@pytest.mark.parametrize("op", [lambda x, f: upsample2d(x, f), lambda x, f: downsample2d(x, f),
                                lambda x, f: filter2d(x, f)])
def test_helpers_keep_constant_images_constant(op):
    x = torch.full((1, 2, 8, 8), 0.7, dtype=torch.float64)
    y = op(x, setup_filter([1, 3, 3, 1]).double())
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 0.7))


def test_gradcheck():
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    for kw in [dict(up=2, pad=(1, 0, 2, -1)), dict(down=(2, 1), pad=1, flip_filter=True),
               dict(up=(1, 2), down=2, pad=(2, 1), gain=2.0)]:
        assert torch.autograd.gradcheck(lambda x, f: upfirdn2d(x, f, **kw), (x, f), fast_mode=True)


def test_gradcheck_helpers_second_order():
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    f = setup_filter([1, 3, 3, 1]).double()
    assert torch.autograd.gradgradcheck(lambda x: upsample2d(x, f), (x,), fast_mode=True)


def test_inference_mode():
    with torch.inference_mode():
        y = upsample2d(torch.randn(1, 2, 4, 4), setup_filter([1, 3, 3, 1]))
    assert y.shape == (1, 2, 8, 8)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randn(3, 8, 8)), ValueError, r"x must be rank 4 \[N,C,H,W\], got shape \(3, 8, 8\)"),
    (dict(x=torch.ones(1, 1, 4, 4, dtype=torch.int64)), TypeError, "x must be a floating-point"),
    (dict(f=torch.ones(4)), ValueError, "f must be a non-empty 2-D filter"),
    (dict(f=torch.ones(1, 2, 2)), ValueError, r"f must be .* got shape \(1, 2, 2\)"),
    (dict(f=[[1.0]]), TypeError, "f must be a floating-point tensor"),
    (dict(up=0), ValueError, "up must be an int >= 1"),
    (dict(down=(1, 2, 3)), ValueError, "down must be"),
    (dict(pad=(1, 2, 3)), ValueError, "pad must be"),
    (dict(pad=1.5), ValueError, "pad must be"),
    (dict(f=torch.ones(6, 6)), ValueError, "output size must be >= 1"),
    (dict(pad=-2), ValueError, "output size must be >= 1"),
    (dict(impl="fast"), ValueError, "impl must be one of"),
    (dict(impl="cuda"), RuntimeError, "impl='cuda' needs CUDA tensors"),
])
def test_errors(kwargs, exc, match):
    args = dict(x=torch.randn(1, 1, 4, 4), f=torch.ones(3, 3))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        upfirdn2d(**args)


def test_cuda_autograd_function_with_stand_in_kernel(monkeypatch):
    """The CUDA path's backward (upfirdn2d with moved pads) on the CPU, the kernel stood in for
    by the reference op."""
    from stylegan2.ops import build
    from stylegan2.ops.upfirdn2d import _Params, _Upfirdn2dCuda, _upfirdn2d_ref

    monkeypatch.setattr(build, "load_plugin", lambda: type("Kernels", (), {
        "upfirdn2d": staticmethod(lambda x, f, *p: _upfirdn2d_ref(x, f, _Params(*p)))}))
    f = torch.randn(3, 4, dtype=torch.float64)
    for size, p in [((4, 5), (2, 2, 1, 1, 2, 1, 2, 1, False, 1.0)),
                    ((7, 6), (1, 1, 2, 2, 1, 1, -1, 0, True, 2.0)),
                    ((3, 5), (2, 1, 1, 3, 3, -1, 0, 2, False, 0.5)),
                    ((5, 4), (4, 2, 3, 2, -2, 1, 1, 3, True, 1.0))]:
        x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)
        fn = lambda x: _Upfirdn2dCuda.apply(x, f, _Params(*p))
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


# --- CUDA (skipped without a GPU) ---------------------------------------------------------------

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _cuda_devices():
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,fsize,up,down,pad", CASES)
def test_cuda_matches_ref(size, fsize, up, down, pad, dtype, channels_last):
    x = torch.randn(2, 5, *size, device="cuda", dtype=torch.float64)
    f = torch.randn(*fsize, device="cuda", dtype=torch.float64)
    x_d, f_d = x.to(dtype), f.to(dtype)
    if channels_last:
        x_d = x_d.contiguous(memory_format=torch.channels_last)
    x_d.requires_grad_(True)
    y = upfirdn2d(x_d, f_d, up=up, down=down, pad=pad, gain=1.5, impl="cuda")
    x_ref = x_d.detach().double().requires_grad_(True)
    y_ref = upfirdn2d(x_ref, f_d.double(), up=up, down=down, pad=pad, gain=1.5, impl="ref")
    tol = TOLERANCE[dtype] * y_ref.abs().max().item()
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=tol)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last) == channels_last
    dy = torch.randn_like(y_ref)
    (dx,) = torch.autograd.grad(y, x_d, dy.to(dtype))
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy.to(dtype).double())
    torch.testing.assert_close(dx.double(), dx_ref, rtol=0, atol=TOLERANCE[dtype] * dx_ref.abs().max().item())


@pytest.mark.cuda
def test_cuda_gradcheck_and_every_device():
    for device in _cuda_devices():  # includes cuda:1.. on multi-GPU machines (device guard)
        x = torch.randn(1, 2, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
        f = torch.randn(3, 4, device=device, dtype=torch.float64)
        for kw in [dict(up=2, pad=(2, 1, 0, 3)), dict(down=2, pad=(1, -1)), dict(up=(1, 2), down=(2, 1))]:
            fn = lambda x: upfirdn2d(x, f, impl="cuda", **kw)
            assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
        y = upsample2d(x.detach(), f, impl="cuda")
        assert y.device == x.device
