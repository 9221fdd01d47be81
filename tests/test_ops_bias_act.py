"""bias_act: the reference op against a float64 oracle written from the formulas."""
import math

import numpy as np
import pytest
import torch

from stylegan2.ops import ACTIVATIONS, bias_act

SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717

# name -> (numpy formula of act(z, alpha), default alpha, default gain)
ORACLE = {
    "linear": (lambda z, a: z, 0.0, 1.0),
    "relu": (lambda z, a: np.maximum(z, 0), 0.0, math.sqrt(2)),
    "lrelu": (lambda z, a: np.where(z > 0, z, a * z), 0.2, math.sqrt(2)),
    "tanh": (lambda z, a: np.tanh(z), 0.0, 1.0),
    "sigmoid": (lambda z, a: 1 / (1 + np.exp(-z)), 0.0, 1.0),
    "elu": (lambda z, a: np.where(z > 0, z, a * (np.exp(z) - 1)), 1.0, 1.0),
    "selu": (lambda z, a: SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * (np.exp(z) - 1)), 0.0, 1.0),
    "softplus": (lambda z, a: np.log1p(np.exp(z)), 0.0, 1.0),
    "swish": (lambda z, a: z / (1 + np.exp(-z)), 0.0, math.sqrt(2)),
}


def oracle(x, b, dim, act, alpha=None, gain=None, clamp=None):
    func, default_alpha, default_gain = ORACLE[act]
    z = x.numpy().astype(np.float64)
    if b is not None:
        shape = [1] * z.ndim
        shape[dim] = -1
        z = z + b.numpy().astype(np.float64).reshape(shape)
    y = func(z, default_alpha if alpha is None else alpha) * (default_gain if gain is None else gain)
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return torch.from_numpy(y)


def test_table_covers_oracle_and_kernel_indices_unique():
    assert set(ACTIVATIONS) == set(ORACLE)
    assert sorted(s.cuda_idx for s in ACTIVATIONS.values()) == list(range(len(ACTIVATIONS)))
    for name, (_, alpha, gain) in ORACLE.items():
        assert (ACTIVATIONS[name].alpha, ACTIVATIONS[name].gain) == pytest.approx((alpha, gain))


@pytest.mark.parametrize("act", sorted(ORACLE))
@pytest.mark.parametrize("shape,dim", [((2, 5, 3, 4), 1), ((3, 7), 1), ((4, 3, 6), 2), ((6, 2), 0), ((3, 5, 2), -1)])
def test_matches_oracle(act, shape, dim):
    x = torch.randn(shape, dtype=torch.float64) * 3
    b = torch.randn(shape[dim], dtype=torch.float64)
    torch.testing.assert_close(bias_act(x, b, dim=dim, act=act), oracle(x, b, dim, act))


@pytest.mark.parametrize("act", ["linear", "lrelu", "tanh", "swish"])
def test_options(act):
    x = torch.randn(2, 3, 4, dtype=torch.float64) * 3
    b = torch.randn(3, dtype=torch.float64)
    for kw in [dict(alpha=0.1, gain=0.5), dict(clamp=0.8), dict(gain=3.0, clamp=2.5), dict(clamp=0.0)]:
        torch.testing.assert_close(bias_act(x, b, act=act, **kw), oracle(x, b, 1, act, **kw))
    torch.testing.assert_close(bias_act(x, None, act=act), oracle(x, None, 1, act))


def test_fused_leaky_relu_semantics():
    """StyleGAN2's fused_leaky_relu: leaky_relu(x + b, 0.2) * sqrt(2)."""
    x, b = torch.randn(2, 4, 3, 3), torch.randn(4)
    expected = torch.nn.functional.leaky_relu(x + b[:, None, None], 0.2) * math.sqrt(2)
    torch.testing.assert_close(bias_act(x, b, act="lrelu"), expected)


def test_half_bias_cast_to_input_dtype():
    x, b = torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(3)
    assert bias_act(x, b, act="relu").dtype == torch.bfloat16


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(layout):
    if layout == "channels_last":
        x = torch.randn(2, 4, 3, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 8, 3, 10, dtype=torch.float64)[:, ::2, :, ::2]
    b = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(bias_act(x, b, act="lrelu", clamp=1.0), oracle(x, b, 1, "lrelu", clamp=1.0))


@pytest.mark.parametrize("act", sorted(ORACLE))
def test_gradcheck_and_gradgradcheck(act):
    x = torch.randn(2, 3, 2, dtype=torch.float64) * 2
    x = (x + 0.1 * x.sign()).requires_grad_(True)  # keep away from kinks at 0 (finite differences)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act=act, gain=1.3)
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


def test_gradcheck_clamp():
    x = torch.tensor([[-3.0, -0.5, 0.3, 2.9]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.1, 0.2, -0.1, 0.0], dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act="tanh", gain=2.0, clamp=1.5)
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)


def test_inference_mode():
    with torch.inference_mode():
        y = bias_act(torch.randn(2, 3), torch.randn(3), act="lrelu")
    assert y.shape == (2, 3)


@pytest.mark.parametrize("b", [None, torch.zeros(3)])
def test_input_untouched_without_autograd(b):
    """Regression: the no-grad path scales its own temporary in place, never x."""
    x = torch.randn(2, 3)
    before = x.clone()
    with torch.no_grad():
        bias_act(x, b, act="linear", gain=2.0, clamp=0.5)
    torch.testing.assert_close(x, before)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.ones(2, 3, dtype=torch.int32)), TypeError, "x must be a floating-point tensor"),
    (dict(b=torch.ones(4)), ValueError, r"b must be 1-D of length x.shape\[1\] = 3, got shape \(4,\)"),
    (dict(b=torch.ones(1, 3)), ValueError, "b must be 1-D"),
    (dict(b=[1.0, 2.0, 3.0]), TypeError, "b must be a floating-point tensor or None"),
    (dict(dim=2), ValueError, "dim must be an int in"),
    (dict(act="gelu"), ValueError, r"act must be one of \[.*'lrelu'.*\], got 'gelu'"),
    (dict(clamp=-1.0), ValueError, "clamp must be None or >= 0"),
    (dict(act="lrelu", alpha=-0.1), ValueError, "alpha must be >= 0"),
    (dict(impl="gpu"), ValueError, "impl must be one of"),
    (dict(impl="cuda"), RuntimeError, "impl='cuda' needs CUDA tensors"),
])
def test_errors(kwargs, exc, match):
    args = dict(x=torch.randn(2, 3), b=torch.randn(3))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        bias_act(**args)


# --- CUDA-path autograd on the CPU, with a stand-in for the kernel ----------------------------

# z from a = act(z), for the activations whose kernel reads derivatives off the output y.
INVERSE = {
    "linear": lambda a, al: a,
    "relu": lambda a, al: torch.where(a > 0, a, -torch.ones_like(a)),  # any z <= 0 will do
    "lrelu": lambda a, al: torch.where(a > 0, a, a / al),
    "tanh": lambda a, al: torch.atanh(a),
    "sigmoid": lambda a, al: torch.logit(a),
    "elu": lambda a, al: torch.where(a > 0, a, torch.log1p(a / al)),
    "selu": lambda a, al: torch.where(a > 0, a / SELU_SCALE, torch.log1p(a / (SELU_SCALE * SELU_ALPHA))),
    "softplus": lambda a, al: torch.log(torch.expm1(a)),
}


class StandInKernels:
    """The kernel contract of csrc/ops.h (modes 0/1/2), derivatives taken by autograd."""

    def bias_act(self, x, b, ref, dy, mode, ref_is_x, dim, act, alpha, gain, clamp):
        name = next(k for k, v in ACTIVATIONS.items() if v.cuda_idx == act)
        func = ACTIVATIONS[name].func
        bias = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b.numel() else 0
        if mode == 0:
            y = func(x + bias, alpha) * gain
            return y.clamp(-clamp, clamp) if clamp >= 0 else y
        if ref.numel() == 0:
            z = torch.zeros_like(x)
        else:
            z = ref + bias if ref_is_x else INVERSE[name](ref / gain, alpha)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            a = func(z, alpha)
            (d1,) = torch.autograd.grad(a.sum(), z, create_graph=True)
            d2 = torch.autograd.grad(d1.sum(), z)[0] if d1.requires_grad else torch.zeros_like(z)
        y = ref if ref.numel() and not ref_is_x else a * gain
        passed = y.abs() < clamp if clamp >= 0 else torch.ones_like(z, dtype=torch.bool)
        d = d1 if mode == 1 else d2 * dy
        return torch.where(passed, x * gain * d, torch.zeros_like(x)).detach()


@pytest.mark.parametrize("act", sorted(ORACLE))
@pytest.mark.parametrize("clamp", [None, 1.2])
def test_cuda_autograd_functions_with_stand_in_kernel(act, clamp, monkeypatch):
    from stylegan2.ops import build
    from stylegan2.ops.bias_act import _BiasActCuda, _check_args

    monkeypatch.setattr(build, "load_plugin", StandInKernels)
    x = torch.randn(2, 3, 2, dtype=torch.float64) * 2
    x = (x + 0.1 * x.sign()).requires_grad_(True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p = _check_args(x, b, 1, act, None, 1.3, clamp)
    fn = lambda x, b: _BiasActCuda.apply(x, b, p)
    torch.testing.assert_close(fn(x, b), bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: _BiasActCuda.apply(x, None, p), (x,), fast_mode=True)


# --- CUDA (skipped without a GPU) ---------------------------------------------------------------

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("act", sorted(ORACLE))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("clamp", [None, 0.9])
def test_cuda_matches_ref(dtype, act, layout, clamp):
    x = (torch.randn(3, 6, 5, 14, device="cuda", dtype=torch.float64) * 2).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, :, ::2]  # strided in every dtype: sliced after the conversion
        assert not x.is_contiguous()
    b = torch.randn(6, device="cuda", dtype=torch.float64)
    x_d, b_d = x.requires_grad_(True), b.to(dtype).requires_grad_(True)
    x_r, b_r = x_d.detach().double().requires_grad_(True), b_d.detach().double().requires_grad_(True)
    y = bias_act(x_d, b_d, act=act, clamp=clamp, impl="cuda")
    y_r = bias_act(x_r, b_r, act=act, clamp=clamp, impl="ref")
    scale = max(y_r.abs().max().item(), 1.0)
    torch.testing.assert_close(y.double(), y_r, rtol=0, atol=TOLERANCE[dtype] * scale)
    dy = torch.randn_like(y_r).to(dtype)
    dx, db = torch.autograd.grad(y, (x_d, b_d), dy)
    dx_r, db_r = torch.autograd.grad(y_r, (x_r, b_r), dy.double())
    torch.testing.assert_close(dx.double(), dx_r, rtol=0, atol=TOLERANCE[dtype] * 4 * scale)
    torch.testing.assert_close(db.double(), db_r, rtol=0, atol=TOLERANCE[dtype] * x.numel() / 6 * scale)


@pytest.mark.cuda
@pytest.mark.parametrize("act", sorted(ORACLE))
def test_cuda_second_order_every_device(act):
    for i in range(torch.cuda.device_count()):  # cuda:1.. exercise the device guard
        x = torch.randn(2, 3, 2, device=f"cuda:{i}", dtype=torch.float64) * 2
        x = (x + 0.1 * x.sign()).requires_grad_(True)
        b = torch.zeros(3, device=f"cuda:{i}", dtype=torch.float64, requires_grad=True)
        fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, impl="cuda")
        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))
