"""Fused bias + activation + gain + clamp, with a reference path and a CUDA path.

The activation table `ACTIVATIONS` is shared by both paths (the kernel switches on `cuda_idx`,
which must match `csrc/bias_act.cu`), so they cannot drift apart.
"""
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from . import build, impl as _impl


@dataclass(frozen=True)
class Activation:
    """One row of the activation table.

    func:         reference f(x, alpha); alpha is ignored by activations without one.
    alpha:        default alpha (lrelu slope, elu scale; 0 where unused).
    gain:         default gain applied after the activation.
    cuda_idx:     index of the activation in the kernel's switch.
    grad_from:    "x" when the kernel computes f' from x + b, "y" when from the saved output
                  (cheaper: y is usually kept alive by the next layer anyway); with a clamp,
                  always x (the clamp mask is recomputed from x + b).
    has_2nd_grad: f'' is non-zero somewhere, so double backward needs the second-order kernel mode.
    """

    func: Callable[[torch.Tensor, float], torch.Tensor]
    alpha: float
    gain: float
    cuda_idx: int
    grad_from: str
    has_2nd_grad: bool


ACTIVATIONS = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0, 0, "y", False),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 1, "y", False),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 2, "y", False),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0, 3, "y", True),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 4, "y", True),
    "elu": Activation(lambda x, a: F.elu(x, a), 1.0, 1.0, 5, "y", True),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0, 6, "y", True),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0, 7, "y", True),
    "swish": Activation(lambda x, a: x * torch.sigmoid(x), 0.0, math.sqrt(2), 8, "x", True),
}


class _Params(NamedTuple):
    """Static arguments, resolved (defaults filled in; clamp -1 = none)."""

    dim: int
    act: str
    alpha: float
    gain: float
    clamp: float


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None, impl: Optional[str] = None) -> torch.Tensor:
    """Fused ``clamp(act(x + b, alpha) * gain, -clamp, clamp)``.

    1. ``x``: floating tensor of any shape and memory layout (float16/bfloat16/float32/float64).
    2. ``b``: optional 1-D bias of length ``x.shape[dim]``, broadcast along every other axis and
       cast to ``x.dtype``.
    3. ``act``: a key of `ACTIVATIONS` (linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus,
       swish). ``alpha`` and ``gain`` default to the table's values (lrelu: 0.2 and sqrt(2), i.e.
       StyleGAN2's ``fused_leaky_relu``).
    4. ``clamp``: None for no clamping, else a value >= 0 bounding the output to [-clamp, clamp].
    5. Returns a tensor with the shape and dtype of ``x``. Differentiable to any order on the
       reference path; first and second order on the CUDA path.

    ``impl``: "auto" | "cuda" | "ref", or None for the module default (see `stylegan2.ops.impl`).
    """
    p = _check_args(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        b = b.to(dtype=x.dtype)
    if _impl.use_cuda("bias_act", impl, x):
        return _BiasActCuda.apply(x, b, p)
    return _bias_act_ref(x, b, p)


def _check_args(x, b, dim, act, alpha, gain, clamp) -> _Params:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"bias_act: x must be a floating-point tensor, got {_describe(x)}")
    if b is not None:
        if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
            raise ValueError(f"bias_act: dim must be an int in [{-x.ndim}, {x.ndim}) for x of shape "
                             f"{tuple(x.shape)}, got {dim!r}")
        dim %= x.ndim
        if not isinstance(b, torch.Tensor) or not b.is_floating_point():
            raise TypeError(f"bias_act: b must be a floating-point tensor or None, got {_describe(b)}")
        if b.ndim != 1 or b.numel() != x.shape[dim]:
            raise ValueError(f"bias_act: b must be 1-D of length x.shape[{dim}] = {x.shape[dim]}, "
                             f"got shape {tuple(b.shape)}")
        if b.device != x.device:
            raise ValueError(f"bias_act: b is on {b.device} but x is on {x.device}")
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    if act in ("lrelu", "elu") and alpha is not None and not alpha >= 0:
        # The kernels read the sign of x + b off the output, which needs alpha >= 0.
        raise ValueError(f"bias_act: alpha must be >= 0 for {act}, got {alpha!r}")
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"bias_act: clamp must be None or >= 0, got {clamp!r}")
    spec = ACTIVATIONS[act]
    return _Params(dim, act,
                   float(spec.alpha if alpha is None else alpha),
                   float(spec.gain if gain is None else gain),
                   float(-1 if clamp is None else clamp))


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor of dtype {v.dtype}"
    return type(v).__name__


def _bias_act_ref(x: torch.Tensor, b: Optional[torch.Tensor], p: _Params) -> torch.Tensor:
    """The specification: plain PyTorch, differentiable to any order by autograd."""
    recording = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    y = x
    if b is not None:
        y = y + b.reshape([-1 if i == p.dim else 1 for i in range(x.ndim)])
    y = ACTIVATIONS[p.act].func(y, p.alpha)
    # Without autograd, scale and clamp our own temporary in place: at 1024 px a pass over a
    # fresh tensor costs as much as the arithmetic.
    in_place = not recording and y is not x
    if p.gain != 1:
        y = y.mul_(p.gain) if in_place else y * p.gain
        in_place = not recording
    if p.clamp >= 0:
        y = y.clamp_(-p.clamp, p.clamp) if in_place else y.clamp(-p.clamp, p.clamp)
    return y


# ---------------------------------------------------------------------------------------------
# CUDA path. Kernel modes (csrc/ops.h): 0 forward; 1 gradient ``g * dy/dz``; 2 second derivative
# ``g * dy_saved * d2y/dz2``, with z = x + b read from x or (cheaper) from the output y, as the
# table's `grad_from` says. Mode 1 is linear in g, so the backward of the backward is mode 1
# again for the incoming-gradient path and mode 2 for the x path.

_EMPTY = torch.empty(0)


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    return _EMPTY.to(device=x.device, dtype=x.dtype)


def _reduce_to_bias(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over every axis but `dim` (a 1-D g is the bias gradient itself)."""
    dims = [i for i in range(g.ndim) if i != dim]
    return g.sum(dims) if dims else g


def _grad_from(p: _Params) -> str:
    """What the gradient kernels read z from: the table's choice, but x whenever there is a clamp
    (the clamp mask must be recomputed in float: the stored output is rounded in fp16/bf16)."""
    return "x" if p.clamp >= 0 else ACTIVATIONS[p.act].grad_from


def _kernel(g, b, ref, dy, mode: int, p: _Params) -> torch.Tensor:
    return build.load_plugin().bias_act(g, b, ref, dy, mode, _grad_from(p) == "x", p.dim,
                                        ACTIVATIONS[p.act].cuda_idx, p.alpha, p.gain, p.clamp)


def _grad_ref(x: torch.Tensor, y: torch.Tensor, p: _Params) -> torch.Tensor:
    return x if _grad_from(p) == "x" else y


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, p: _Params):
        empty = _empty_like(x)
        b = empty if b is None else b
        y = _kernel(x, b, empty, empty, 0, p)
        spec = ACTIVATIONS[p.act]
        # Keep only what the gradient kernels read; x also when double backward must reach it.
        keep_x = _grad_from(p) == "x" or spec.has_2nd_grad
        keep_y = _grad_from(p) == "y" and p.act != "linear"
        ctx.save_for_backward(x if keep_x else empty, b, y if keep_y else empty)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b, y = ctx.saved_tensors
        dx = _BiasActGradCuda.apply(dy, x, b, y, ctx.p)
        db = _reduce_to_bias(dx, ctx.p.dim) if b.numel() and ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActGradCuda(torch.autograd.Function):
    """dx = dy * dy/dz as a function of (dy, x, b), so that it can be differentiated again.

    `y` is the forward output, a cached form of z = x + b: its gradient is folded into x's.
    """

    @staticmethod
    def forward(ctx, dy, x, b, y, p: _Params):
        dx = _kernel(dy, b, _grad_ref(x, y, p), _empty_like(dy), 1, p)
        ctx.save_for_backward(dy if ACTIVATIONS[p.act].has_2nd_grad else _empty_like(dy), x, b, y)
        ctx.p = p
        return dx

    @staticmethod
    def backward(ctx, d_dx):
        dy, x, b, y = ctx.saved_tensors
        p = ctx.p
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGradCuda.apply(d_dx, x, b, y, p)
        if ACTIVATIONS[p.act].has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_x = _kernel(d_dx, b, _grad_ref(x, y, p), dy, 2, p)
            if ctx.needs_input_grad[2] and b.numel():
                d_b = _reduce_to_bias(d_x, p.dim)
        return d_dy, d_x, d_b, None, None
