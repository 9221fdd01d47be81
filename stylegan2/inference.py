"""The generator's CPU inference rewrite: the maths of `stylegan2.layers`, fewer passes over memory.

`optimize_generator_for_inference(generator)` returns an `InferenceGenerator`: a frozen deep copy
of ``generator`` (parameters with ``requires_grad=False``, eval mode) whose layers are re-typed to
the subclasses below. The subclasses add no parameters, buffers or settings and replace only
``forward``, so

- the copy's ``state_dict()`` has the names and values of the original's (it loads into a plain
  `Generator` with ``strict=True``): saving it cannot make a file our loaders reject, and
- the original is never touched: it stays the specification (training, tests, checkpoints).

A copy rather than an in-place rewrite (the encoder's BatchNorm fold, `psp.nets.fuse`, is in place)
because a generator is shared: the model that made it keeps the specification while inference runs
the rewrite. It costs one more set of weights (about 120 MB for the 1024 config-f model in
float32); replace the original by the copy when only the copy is needed.

"Inference" means any use of a frozen generator: gradients w.r.t. its inputs flow through the copy
(latent refinement, and the pSp training step, which trains the encoder through a frozen
generator), only its own weights cannot be trained.

The rewrites, all on CPU tensors only (a CUDA tensor gets the specification's forward, whose ops
are one fused kernel each already):

- channels-last activations: oneDNN's convolutions run about 2x faster in NHWC, and every layer
  keeps the layout it is given, so the constant input is made channels-last once;
- the blur after the upsampling convolution is one depthwise convolution that pads inside the call
  (upfirdn2d's reference path pads a copy first): the same true convolution;
- with autograd off (``torch.no_grad`` / ``torch.inference_mode``), `StyledConv`'s elementwise tail
  (demodulation, noise, bias, leaky ReLU, clamp) runs as in-place passes over the fresh
  convolution output, and `ToRGB` adds its bias and skip in place: on CPU a fresh 100 MB tensor
  costs several times the arithmetic that fills it. With autograd on (latent refinement
  differentiates through the generator w.r.t. W+ and noise) the tails are the specification's.

Same maths as the specification, rounded in another order: float64 agrees to ~1e-15 relative,
float32 to float32 rounding (tests/test_generator_inference.py).

A layer's ``conv_clamp`` attribute (None or missing: no clamp) is honoured as in NVIDIA's
StyleGAN2-ADA: `StyledConv` clamps after bias, activation and gain, `ToRGB` after its bias and
before the skip is added.
"""
import copy
from typing import Optional

import torch
import torch.nn.functional as F

from .generator import Generator
from .layers import Blur, StyledConv, ToRGB
from .ops import ACTIVATIONS

_LRELU = ACTIVATIONS["lrelu"]  # the slope and gain of StyledConv's FusedLeakyReLU (bias_act's defaults)


def _rewrites(x: torch.Tensor) -> bool:
    """The CPU rewrites apply to `x` (on other devices the specification's ops are fused kernels)."""
    return x.device.type == "cpu"


def _overwritable(x: torch.Tensor) -> bool:
    """A tensor the caller has just made may be overwritten: CPU, and no autograd graph to keep."""
    return _rewrites(x) and not torch.is_grad_enabled()


class InferenceBlur(Blur):
    """`Blur` as one depthwise convolution padding inside the call, for equal pads on both sides
    (the upsampling convolution's (1, 1)); otherwise, and off the CPU, ``upfirdn2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        if not (_rewrites(x) and p0 == p1 >= 0):
            return super().forward(x)
        channels = x.shape[1]
        # upfirdn2d is a true convolution; conv2d correlates, so it takes the flipped kernel.
        weight = self.kernel.flip([0, 1]).to(x.dtype)[None, None].expand(channels, 1, -1, -1)
        return F.conv2d(x, weight, padding=p0, groups=channels)


class InferenceStyledConv(StyledConv):
    """`StyledConv` whose tail, with autograd off on CPU, overwrites the convolution output.

    ``lrelu(y) * g = lrelu(y * g)`` for a gain ``g > 0``, so the gain moves into the coefficients:
    ``out = lrelu(out * d*g + b*g + noise * n*g)`` in three passes (then a clamp pass when the
    layer has a ``conv_clamp``). Random noise is drawn as `NoiseInjection` draws it, after the
    convolution, so a seeded call gives the specification's noise.
    """

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not _overwritable(x):
            return super().forward(x, w, noise)
        out, dcoefs = self.conv.conv_and_demod(x, w)
        if noise is None:
            batch, _, height, width = out.shape
            noise = out.new_empty(batch, 1, height, width).normal_()
        gain = _LRELU.gain
        shift = (self.activate.bias * gain).to(out.dtype)[None, :, None, None]
        if dcoefs is None:
            out = torch.add(shift, out, alpha=gain, out=out)
        else:
            out = torch.addcmul(shift, out, (dcoefs * gain).to(out.dtype)[:, :, None, None], out=out)
        out = out.addcmul_(noise.to(out.dtype), (self.noise.weight * gain).to(out.dtype))
        out = F.leaky_relu_(out, _LRELU.alpha)
        clamp = getattr(self, "conv_clamp", None)
        return out if clamp is None else out.clamp_(-clamp, clamp)


class InferenceToRGB(ToRGB):
    """`ToRGB` adding the bias (then clamping, with a ``conv_clamp``) and the upsampled skip in
    place, with autograd off on CPU."""

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not _overwritable(x):
            return super().forward(x, w, skip)
        out = self.conv(x, w).add_(self.bias)
        clamp = getattr(self, "conv_clamp", None)
        if clamp is not None:
            out = out.clamp_(-clamp, clamp)
        if skip is None:
            return out
        if not hasattr(self, "upsample"):
            raise ValueError("ToRGB: this layer was built with upsample=False and takes no skip")
        return out.add_(self.upsample(skip))


class InferenceGenerator(Generator):
    """A `Generator` made by `optimize_generator_for_inference`; same call and state dict.

    Starts the synthesis from a channels-last constant on CPU (see the module docstring).
    """

    def _constant_input(self, batch: int) -> torch.Tensor:
        out = super()._constant_input(batch)
        return out.contiguous(memory_format=torch.channels_last) if _rewrites(out) else out


# Specification class -> its inference form (exact types: a subclass of ours is left alone).
_INFERENCE_FORMS = {Generator: InferenceGenerator, Blur: InferenceBlur,
                    StyledConv: InferenceStyledConv, ToRGB: InferenceToRGB}


def optimize_generator_for_inference(generator: Generator) -> InferenceGenerator:
    """A frozen copy of ``generator`` with the CPU inference rewrites (see the module docstring).

    Same call, outputs equal up to rounding, same ``state_dict()`` names and values; the copy's
    parameters do not require gradients (gradients w.r.t. inputs such as W+ or noise still flow)
    and it is in eval mode. ``generator`` itself is not modified. Move the generator to its device
    before or after: the rewrites choose per call from the tensors' device.
    """
    if not isinstance(generator, Generator):
        raise TypeError(f"optimize_generator_for_inference: expected a stylegan2.Generator, "
                        f"got {type(generator).__name__}")
    fast = copy.deepcopy(generator)
    for module in fast.modules():
        form = _INFERENCE_FORMS.get(type(module))
        if form is not None:
            # The forms subclass the specification's classes and add no state, so re-typing keeps
            # every parameter, buffer and setting (and hence the state dict) as it is.
            module.__class__ = form
    return fast.requires_grad_(False).eval()
