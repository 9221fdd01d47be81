"""StyleGAN2 custom ops: fused bias + activation and upfirdn2d, as pure PyTorch ("ref", the
specification) and as our own CUDA kernels ("cuda", built lazily on first use on a CUDA tensor).

Every op takes ``impl=None | "auto" | "cuda" | "ref"``; None means the module default, set with
`set_default_impl` (config key ``ops.impl``). `active_impl()` reports what runs where.
"""
from .bias_act import ACTIVATIONS, bias_act
from .impl import active_impl, get_default_impl, set_default_impl
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["ACTIVATIONS", "active_impl", "bias_act", "downsample2d", "filter2d", "get_default_impl",
           "set_default_impl", "setup_filter", "upfirdn2d", "upsample2d"]
