"""2-D upsample -> pad -> FIR filter -> downsample (scipy.signal.upfirdn on both axes).

Conventions: ``up``/``down`` are an int or ``(x, y)``; ``pad`` is an int, ``(p0, p1)`` for both
axes, or ``(x0, x1, y0, y1)``; the x axis is the last (width) axis. Filters are 2-D ``[fh, fw]``.
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import build, impl as _impl

IntPair = Union[int, Sequence[int]]
Pad = Union[int, Sequence[int]]

# The CUDA kernel holds the filter in shared memory: 48 KiB of doubles (kMaxTaps in
# csrc/upfirdn2d_kernel.h). Larger filters run on the reference path under impl="auto".
MAX_FILTER_TAPS = 48 * 1024 // 8


class _Params(NamedTuple):
    """Static arguments, normalised: factors per axis and the four pads."""

    upx: int
    upy: int
    downx: int
    downy: int
    padx0: int
    padx1: int
    pady0: int
    pady1: int
    flip_filter: bool
    gain: float


def setup_filter(f=None, normalize: bool = True, flip: bool = False, gain: float = 1,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """Turn filter taps into the 2-D float32 filter that `upfirdn2d` takes.

    1. ``f``: None (identity ``[[1]]``), a scalar, 1-D taps ``[k]`` (made 2-D as the outer
       product ``outer(f, f)``, i.e. the same filter along both axes), or 2-D ``[fh, fw]``;
       list, numpy array or tensor.
    2. ``normalize``: divide by the sum, so the filter preserves a constant signal.
    3. ``flip``: flip both axes. 4. ``gain``: multiply by ``gain``.
    Returns a float32 tensor ``[fh, fw]`` on ``device``.
    """
    if f is None:
        f = 1
    if not isinstance(f, torch.Tensor):
        f = np.asarray(f, dtype=np.float32)
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1, 1)
    elif f.ndim == 1:
        f = torch.outer(f, f)
    elif f.ndim != 2:
        raise ValueError(f"setup_filter: f must be 1-D taps or 2-D [fh, fw], got shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError("setup_filter: f must not be empty")
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError("setup_filter: cannot normalize a filter whose taps sum to 0")
        f = f / total
    if flip:
        f = f.flip([0, 1])
    return (f * gain).to(device=device)


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 1, down: IntPair = 1,
              pad: Pad = 0, flip_filter: bool = False, gain: float = 1,
              impl: Optional[str] = None) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images.

    1. ``x``: ``[N, C, H, W]`` floating tensor (any layout; channels_last stays channels_last).
    2. Upsample: insert ``up - 1`` zeros after every sample -> ``[N, C, H*upy, W*upx]``.
    3. Pad with zeros: ``x0``/``x1`` columns left/right, ``y0``/``y1`` rows top/bottom; negative
       pads crop instead.
    4. Filter with ``f`` ``[fh, fw]`` (None: ``[[1]]``) times ``gain``, keeping only positions
       where the filter fits ("valid"). This is a true convolution (the filter is flipped, as in
       scipy.signal.upfirdn); ``flip_filter=True`` gives correlation instead.
    5. Downsample: keep every ``down``-th sample, starting with the first.
    Output: ``[N, C, outH, outW]``, dtype of ``x``, with per axis
    ``out = (in*up + p0 + p1 - fh) // down + 1`` (must be >= 1).

    ``impl``: "auto" | "cuda" | "ref", or None for the module default (see `stylegan2.ops.impl`).
    Differentiable w.r.t. ``x`` (and ``f`` on the reference path).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"upfirdn2d: x must be a floating-point tensor, got {_describe(x)}")
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be rank 4 [N,C,H,W], got shape {tuple(x.shape)}")
    f = _check_filter(f, x)
    upx, upy = _parse_factor("up", up)
    downx, downy = _parse_factor("down", down)
    p = _Params(upx, upy, downx, downy, *_parse_pad(pad), bool(flip_filter), float(gain))
    out_h = _out_size(x.shape[2], upy, downy, p.pady0, p.pady1, f.shape[0])
    out_w = _out_size(x.shape[3], upx, downx, p.padx0, p.padx1, f.shape[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"upfirdn2d: output size must be >= 1, got {out_h}x{out_w} (HxW) from input "
                         f"{x.shape[2]}x{x.shape[3]}, filter {tuple(f.shape)}, up {(upx, upy)}, "
                         f"down {(downx, downy)}, pad {tuple(p[4:8])}")
    if _impl.use_cuda("upfirdn2d", impl, x):
        forced = (impl or _impl.get_default_impl()) == "cuda"
        if f.numel() > MAX_FILTER_TAPS:
            if forced:
                raise RuntimeError(f"upfirdn2d: a {f.shape[0]}x{f.shape[1]} filter has {f.numel()} taps, "
                                   f"over the CUDA kernel's limit of {MAX_FILTER_TAPS}; use impl='ref' "
                                   "or impl='auto'")
        elif not (f.requires_grad and torch.is_grad_enabled()):
            # f keeps its own dtype: the kernel converts it to its accumulation type (float for
            # fp16/bf16 x), so an fp32 filter is never rounded to x's dtype first.
            return _Upfirdn2dCuda.apply(x, f, p)
        elif forced:  # the kernel treats f as a constant; a trainable filter needs the reference path
            raise RuntimeError("upfirdn2d: impl='cuda' does not differentiate w.r.t. f; use impl='ref'")
    return _upfirdn2d_ref(x, f.to(dtype=x.dtype), p)


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor of dtype {v.dtype}"
    return type(v).__name__


def _check_filter(f, x: torch.Tensor) -> torch.Tensor:
    """f on x's device, in its own dtype (None: the identity filter ``[[1]]`` in x's dtype)."""
    if f is None:
        return torch.ones(1, 1, dtype=x.dtype, device=x.device)
    if not isinstance(f, torch.Tensor) or not f.is_floating_point():
        raise TypeError(f"upfirdn2d: f must be a floating-point tensor or None, got {_describe(f)} "
                        "(use setup_filter() to make one from taps)")
    if f.ndim != 2 or f.numel() == 0:
        raise ValueError(f"upfirdn2d: f must be a non-empty 2-D filter [fh, fw], got shape "
                         f"{tuple(f.shape)} (setup_filter() turns 1-D taps into one)")
    return f.to(device=x.device)


def _parse_factor(name: str, v: IntPair) -> Tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(i, int) and i >= 1 for i in pair):
        raise ValueError(f"upfirdn2d: {name} must be an int >= 1 or a pair (x, y) of them, got {v!r}")
    return pair


def _parse_pad(pad: Pad) -> Tuple[int, int, int, int]:
    if isinstance(pad, int):
        pads = (pad,) * 4
    elif isinstance(pad, (tuple, list)) and len(pad) == 2:
        pads = (pad[0], pad[1], pad[0], pad[1])
    elif isinstance(pad, (tuple, list)) and len(pad) == 4:
        pads = tuple(pad)
    else:
        pads = None
    if pads is None or not all(isinstance(i, int) for i in pads):
        raise ValueError(f"upfirdn2d: pad must be an int, (p0, p1) or (x0, x1, y0, y1) of ints, got {pad!r}")
    return pads


def _out_size(n: int, up: int, down: int, p0: int, p1: int, k: int) -> int:
    return (n * up + p0 + p1 - k) // down + 1


# ---------------------------------------------------------------------------------------------
# Reference path. It never convolves zero-inserted tensors or outputs that get dropped:
# upsampling is a strided transposed convolution (which skips the inserted zeros), downsampling a
# strided convolution, and the filter is applied depthwise (groups=C). Splitting rank-1 filters
# into two 1-D passes was measured slower on CPU (memory-bound), so it is not done.

def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor, p: _Params) -> torch.Tensor:
    """The specification; see `upfirdn2d` for the steps."""
    g = f * p.gain if p.gain != 1 else f
    if not p.flip_filter:
        g = g.flip([0, 1])  # conv2d correlates; a true convolution correlates with the flip
    return _correlate(x, g, p.upx, p.upy, p.downx, p.downy, p.padx0, p.padx1, p.pady0, p.pady1)


def _correlate(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1):
    """upfirdn2d with a correlation filter g ``[kh, kw]`` applied depthwise to every channel."""
    channels = x.shape[1]
    kh, kw = g.shape
    w = g[None, None].expand(channels, 1, kh, kw).contiguous()
    if upx == upy == 1:
        x = F.pad(x, [padx0, padx1, pady0, pady1])
        return F.conv2d(x, w, stride=(downy, downx), groups=channels)
    # conv_transpose2d = zero insertion + full *true* convolution, so it takes the unflipped filter.
    # Sample n of that full result is sample n - (k - 1) + p0 of the padded-and-filtered signal;
    # the F.pad below shifts it there (negative amounts crop) and trims it to the output length.
    y = F.conv_transpose2d(x, w.flip([2, 3]), stride=(upy, upx), groups=channels)
    y = F.pad(y, [padx0 - kw + 1, upx + padx1 - kw, pady0 - kh + 1, upy + pady1 - kh])
    if downx > 1 or downy > 1:
        y = y[:, :, ::downy, ::downx]
    return y


# ---------------------------------------------------------------------------------------------
# CUDA path: one kernel (csrc/upfirdn2d.cu); the gradient w.r.t. x is upfirdn2d itself with the
# filter flipped, up and down swapped and the pads moved, so the backward calls the same Function
# (which also makes it differentiable again).

def _grad_params(p: _Params, in_h: int, in_w: int, out_h: int, out_w: int,
                 fh: int, fw: int) -> _Params:
    """Parameters of the upfirdn2d that maps dy ``[.., out_h, out_w]`` to dx ``[.., in_h, in_w]``.

    Per axis, forward output m reads input i through filter tap ``i*up + p0 - m*down``; swapping
    the roles gives up' = down, down' = up, the flipped filter and p0' = k - 1 - p0, with p1' the
    smallest pad that yields exactly ``in`` outputs.
    """
    return _Params(
        upx=p.downx, upy=p.downy, downx=p.upx, downy=p.upy,
        padx0=fw - 1 - p.padx0, padx1=(in_w - 1) * p.upx - out_w * p.downx + p.padx0 + 1,
        pady0=fh - 1 - p.pady0, pady1=(in_h - 1) * p.upy - out_h * p.downy + p.pady0 + 1,
        flip_filter=not p.flip_filter, gain=p.gain)


class _Upfirdn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, p: _Params):
        y = build.load_plugin().upfirdn2d(x, f, *p)
        ctx.save_for_backward(f)
        ctx.grad_p = _grad_params(p, x.shape[2], x.shape[3], y.shape[2], y.shape[3], *f.shape)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        dx = _Upfirdn2dCuda.apply(dy, f, ctx.grad_p) if ctx.needs_input_grad[0] else None
        return dx, None, None


# ---------------------------------------------------------------------------------------------
# Helpers with the padding that keeps images aligned (a constant image stays constant, and the
# output is exactly ``in*up`` / ``in // down`` / ``in`` for pad=0).

def _filter_size(f: Optional[torch.Tensor]) -> Tuple[int, int]:
    """(fw, fh) of a filter (errors about its type and shape are raised by upfirdn2d)."""
    if isinstance(f, torch.Tensor) and f.ndim == 2:
        return f.shape[1], f.shape[0]
    return 1, 1


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntPair = 2, pad: Pad = 0,
               flip_filter: bool = False, gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Upsample ``[N, C, H, W]`` -> ``[N, C, H*upy + y0 + y1, W*upx + x0 + x1]`` with filter f.

    The filter is scaled by ``upx * upy`` (zero insertion divides the mean by that much), so a
    normalised f (`setup_filter`) keeps a constant image constant. ``pad`` adds extra padding.
    With ``setup_filter([1, 3, 3, 1])`` this is rosinality's ``Upsample`` (pads (2, 1), gain 4).
    """
    upx, upy = _parse_factor("up", up)
    padx0, padx1, pady0, pady1 = _parse_pad(pad)
    fw, fh = _filter_size(f)
    pads = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
            pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), pad=pads, flip_filter=flip_filter,
                     gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntPair = 2, pad: Pad = 0,
                 flip_filter: bool = False, gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Filter with f, then keep every ``down``-th sample: ``[N, C, H, W]`` ->
    ``[N, C, (H + y0 + y1) // downy, (W + x0 + x1) // downx]`` (for pad=0, H // downy ...).

    With ``setup_filter([1, 3, 3, 1])`` this is rosinality's ``Downsample`` (pads (1, 1)).
    """
    downx, downy = _parse_factor("down", down)
    padx0, padx1, pady0, pady1 = _parse_pad(pad)
    fw, fh = _filter_size(f)
    pads = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
            pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), pad=pads, flip_filter=flip_filter, gain=gain,
                     impl=impl)


def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], pad: Pad = 0, flip_filter: bool = False,
             gain: float = 1, impl: Optional[str] = None) -> torch.Tensor:
    """Blur with f, keeping the size: ``[N, C, H, W]`` -> ``[N, C, H + y0 + y1, W + x0 + x1]``."""
    padx0, padx1, pady0, pady1 = _parse_pad(pad)
    fw, fh = _filter_size(f)
    pads = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, pad=pads, flip_filter=flip_filter, gain=gain, impl=impl)
