"""The StyleGAN2 generator's layers, named as in rosinality/stylegan2-pytorch.

Attribute names (``weight``, ``modulation``, ``blur.kernel``, ``activate.bias``, ...) are the
checkpoint format: released ``g_ema`` state dicts load into these modules with ``strict=True``.

These layers are the specification: one code path on every device, the filters and the fused
bias + activation through `stylegan2.ops` (so ``impl="ref"`` runs the pure-PyTorch reference ops
and nothing else). The one speed choice made here is the form of the modulated convolution, a
documented per-layer option (`ModulatedConv2d.fused_modconv`): the forms are the same maths.
The CPU inference rewrites (in-place tails, a blur that pads inside its convolution, channels-last
activations) are a separate, tested transformation: `stylegan2.inference`.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import bias_act, upfirdn2d

def make_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """1-D taps ``[k]`` -> the normalised 2-D FIR filter ``outer(taps, taps) / sum**2 * gain``, ``[k, k]``.

    Always computed on the CPU (values, not shapes, even when a model is built on the meta device).
    """
    k = torch.tensor(list(taps), dtype=torch.float32, device="cpu")
    k = torch.outer(k, k)
    return k / k.sum() * gain


class PixelNorm(nn.Module):
    """``x / sqrt(mean(x**2 over dim 1) + 1e-8)``; ``[B, C] -> [B, C]`` (any trailing dims)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate of StyleGAN.

    Stored ``weight`` ``[out_dim, in_dim]`` is drawn N(0, 1 / lr_mul**2); ``bias`` ``[out_dim]``
    starts at ``bias_init``; both are multiplied by ``lr_mul`` at run time. The layer computes
    ``x @ (weight * lr_mul / sqrt(in_dim)).T + bias * lr_mul``; with ``activation="fused_lrelu"``
    it is ``leaky_relu(. + bias * lr_mul, 0.2) * sqrt(2)``. ``[..., in_dim] -> [..., out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: Optional[str] = None, impl: Optional[str] = None):
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"EqualLinear: activation must be None or 'fused_lrelu', got {activation!r}")
        # Stored 1/lr_mul times larger than its effect, so the optimiser's steps shrink by lr_mul.
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation is None:
            return F.linear(x, self.weight * self.scale, bias)
        out = F.linear(x, self.weight * self.scale)
        return bias_act(out, bias, dim=out.ndim - 1, act="lrelu", impl=self.impl)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, "
                f"activation={self.activation}")


class Blur(nn.Module):
    """FIR filter (upfirdn2d without up/down): ``[B, C, H, W] -> [B, C, H + p0 + p1 - k + 1, ...]``.

    ``kernel`` (a persistent buffer, it is in the checkpoints) is the normalised
    ``outer(taps, taps)`` times ``upsample_factor**2`` (the gain that keeps the mean after zero
    insertion).
    """

    def __init__(self, taps: Sequence[float], pad: Sequence[int], upsample_factor: int = 1,
                 impl: Optional[str] = None):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps, gain=upsample_factor ** 2))
        self.pad = tuple(pad)
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad, impl=self.impl)


class Upsample(nn.Module):
    """2x upsampling with an FIR filter: ``[B, C, H, W] -> [B, C, 2H, 2W]``.

    upfirdn2d with up 2, ``kernel`` = normalised ``outer(taps, taps) * 4`` (a persistent buffer) and
    pads ``((k - 2 + 1) // 2 + 1, (k - 2) // 2)``, i.e. (2, 1) for 4 taps.
    """

    def __init__(self, taps: Sequence[float], factor: int = 2, impl: Optional[str] = None):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps, gain=factor ** 2))
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad, impl=self.impl)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution, optionally upsampling by 2.

    Inputs ``x [B, in_channel, H, W]`` and ``w [B, style_dim]``; output
    ``[B, out_channel, H, W]`` (``[B, out_channel, 2H, 2W]`` with ``upsample``).

    1. ``s = modulation(w)`` ``[B, in_channel]`` (EqualLinear, bias init 1).
    2. Per sample ``w'[o, i] = weight[o, i] / sqrt(in_channel * k * k) * s[i]``.
    3. With ``demodulate``: ``w'[o] *= rsqrt(sum(w'[o]**2) + 1e-8)``.
    4. Convolve with padding ``k // 2``; with ``upsample`` instead a stride-2 transposed convolution
       (zero insertion and the spatially flipped kernel) followed by the blur kernel
       ``outer(taps) / sum**2 * 4`` with padding (1, 1) (for 4 taps and k = 3).

    ``fused_modconv``: True computes steps 2-3 per sample and runs one grouped convolution (the
    original code's way); False scales ``x`` by ``s``, runs one shared-weight convolution and scales
    the result by the demodulation coefficients (identical maths, much faster for batches on CPU);
    None (default) picks per call: 1x1 kernels as one batched matmul with per-sample weights;
    otherwise non-fused, except at batch 1 when the weight is smaller than the input (a grouped
    conv of one group is a plain conv, and modulating the weight is then the cheaper pass).
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), fused_modconv: Optional[bool] = None,
                 impl: Optional[str] = None):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        self.fused_modconv = fused_modconv
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1, impl=impl)
        if upsample:
            # Pads that make "transposed conv (size 2H + k - 2) then blur" come out at exactly 2H.
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor, impl=impl)

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
                f"upsample={self.upsample}, demodulate={self.demodulate}, "
                f"fused_modconv={self.fused_modconv}")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out, dcoefs = self.conv_and_demod(x, w)
        return out if dcoefs is None else out * dcoefs[:, :, None, None]

    def conv_and_demod(self, x: torch.Tensor, w: torch.Tensor):
        """The convolution with the demodulation possibly still to apply.

        Returns ``(out, dcoefs)``: the result is ``out * dcoefs[:, :, None, None]`` when
        ``dcoefs`` ``[B, out]`` is not None (non-fused form), else ``out`` itself. Lets the
        inference rewrite (`stylegan2.inference`) fold the demodulation into its own pass.
        """
        batch = x.shape[0]
        if x.ndim != 4 or x.shape[1] != self.in_channel:
            raise ValueError(f"ModulatedConv2d: x must be [B, {self.in_channel}, H, W], "
                             f"got {tuple(x.shape)}")
        if w.ndim != 2 or w.shape[0] != batch:
            raise ValueError(f"ModulatedConv2d: w must be [{batch}, style_dim], got {tuple(w.shape)}")
        # The weight scale folded into the styles: [B, in] instead of a pass over the weight.
        styles = self.modulation(w) * self.scale
        weight = self.weight[0]  # [out, in, k, k]
        dcoefs = None
        if self.demodulate:
            # sum_{i,kh,kw} (weight[o,i] * s[i])**2 = sum_i s[i]**2 * sum_{kh,kw} weight[o,i]**2,
            # without materialising the modulated weight: [B, out].
            sq_norms = torch.linalg.vector_norm(weight, dim=(2, 3)).square()  # [out, in]
            dcoefs = torch.rsqrt(styles.square() @ sq_norms.T + 1e-8)
        form = self._form(x)
        if form == "matmul":
            return self._forward_matmul(x, styles, dcoefs), None
        if form == "fused":
            return self._forward_fused(x, styles, dcoefs), None
        return self._forward_nonfused(x, styles), dcoefs

    def _form(self, x: torch.Tensor) -> str:
        """The form for input ``x``: ``fused`` (grouped conv with per-sample weights), ``nonfused``
        (shared-weight conv) or ``matmul`` (per-sample weights as one batched matmul; 1x1 only)."""
        if self.fused_modconv is not None:
            return "fused" if self.fused_modconv else "nonfused"
        if self.kernel_size == 1 and not self.upsample:
            return "matmul"
        batch, _, height, width = x.shape
        # Batch 1: a grouped conv is a plain conv, so fused costs one pass over the weight and
        # non-fused one over the input (scaling by the styles); take the smaller.
        if batch == 1 and self.out_channel * self.kernel_size ** 2 < height * width:
            return "fused"
        return "nonfused"

    def _modulated_weight(self, styles: torch.Tensor, dcoefs: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample weights ``[B, out, in, k, k]`` (steps 2-3)."""
        coefs = styles[:, None, :]  # [B, 1, in]
        if dcoefs is not None:
            coefs = coefs * dcoefs[:, :, None]  # [B, out, in]
        return self.weight * coefs[..., None, None]

    def _forward_fused(self, x, styles, dcoefs):
        batch, _, height, width = x.shape
        weight = self._modulated_weight(styles, dcoefs)
        k = self.kernel_size
        x = x.reshape(1, batch * self.in_channel, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * self.in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
            return self.blur(out.reshape(batch, self.out_channel, *out.shape[2:]))
        weight = weight.reshape(batch * self.out_channel, self.in_channel, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.reshape(batch, self.out_channel, *out.shape[2:])

    def _forward_matmul(self, x, styles, dcoefs):
        batch, _, height, width = x.shape
        weight = self._modulated_weight(styles, dcoefs)[..., 0, 0]  # [B, out, in]
        if x.is_contiguous(memory_format=torch.channels_last):
            # NHWC memory is already [B, H*W, in]: no copy in or out.
            out = torch.bmm(x.permute(0, 2, 3, 1).reshape(batch, height * width, self.in_channel),
                            weight.transpose(1, 2))
            return out.reshape(batch, height, width, self.out_channel).permute(0, 3, 1, 2)
        out = torch.bmm(weight, x.reshape(batch, self.in_channel, height * width))
        return out.reshape(batch, self.out_channel, height, width)

    def _forward_nonfused(self, x, styles):
        """Shared-weight convolution of the style-scaled input, not yet demodulated."""
        weight = self.weight[0]
        x = x * styles[:, :, None, None]
        if self.upsample:
            return self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        return F.conv2d(x, weight, padding=self.padding)


class NoiseInjection(nn.Module):
    """``x + weight * noise``: one scalar ``weight`` ``[1]`` per layer, noise ``[B or 1, 1, H, W]``
    (drawn N(0, 1) per sample when None). ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        if noise is None:
            batch, _, height, width = x.shape
            noise = x.new_empty(batch, 1, height, width).normal_()
        return x + (self.weight * noise).to(x.dtype)  # stays in x.dtype (bf16 under autocast)


class FusedLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` with ``bias`` ``[channels]`` along dim 1."""

    def __init__(self, channels: int, impl: Optional[str] = None, conv_clamp: Optional[float] = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.impl = impl
        self.conv_clamp = conv_clamp  # None = off; else the output is clamped to [-c, c]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp, impl=self.impl)


class ConstantInput(nn.Module):
    """The learned constant ``input`` ``[1, channel, size, size]``, repeated to the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv -> ``+ noise.weight * noise`` -> ``leaky_relu(. + activate.bias) * sqrt(2)``,
    then clamped to ``[-conv_clamp, conv_clamp]`` when ``conv_clamp`` is set (NVIDIA's
    StyleGAN2-ADA generators use 256; None, rosinality's behaviour, is off).

    ``x [B, in, H, W]``, ``w [B, style_dim]`` -> ``[B, out, H, W]`` (``2H, 2W`` with ``upsample``).
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 demodulate: bool = True, fused_modconv: Optional[bool] = None,
                 impl: Optional[str] = None, conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample,
                                    blur_kernel=blur_kernel, fused_modconv=fused_modconv, impl=impl)
        self.noise = NoiseInjection()
        self.conv_clamp = conv_clamp
        self.activate = FusedLeakyReLU(out_channel, impl=impl, conv_clamp=conv_clamp)

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.conv(x, w)
        out = self.noise(out, noise=noise)
        return self.activate(out)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, ``+ bias`` ``[1, 3, 1, 1]`` (clamped to
    ``[-conv_clamp, conv_clamp]`` when set, before the skip is added, as NVIDIA does), plus the
    upsampled skip image from the previous resolution.

    ``x [B, in, H, W]``, ``w [B, style_dim]``, ``skip [B, 3, H/2, W/2]`` or None -> ``[B, 3, H, W]``.
    """

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), fused_modconv: Optional[bool] = None,
                 impl: Optional[str] = None, conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        if upsample:
            self.upsample = Upsample(blur_kernel, impl=impl)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False,
                                    fused_modconv=fused_modconv, impl=impl)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            if not hasattr(self, "upsample"):
                raise ValueError("ToRGB: this layer was built with upsample=False and takes no skip")
            out = out + self.upsample(skip)
        return out
