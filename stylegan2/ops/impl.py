"""Choosing between the pure-PyTorch reference ops and our CUDA kernels.

`impl` is one of "auto" | "cuda" | "ref"; ops take ``impl=None`` meaning "the module default",
which starts as "auto" and is set by the config key ``ops.impl`` through `set_default_impl`.

- "ref": always the pure-PyTorch path (the specification).
- "cuda": the CUDA kernels; a CPU tensor or a failed build raises RuntimeError.
- "auto": CUDA kernels for CUDA tensors when the extension builds, else the reference path.
  CPU tensors use the reference path silently (there is no CPU kernel to fall back from);
  a failed build warns once per process and falls back.
"""
import warnings
from typing import Optional

import torch

from . import build

IMPLS = ("auto", "cuda", "ref")

_default_impl = "auto"
_warned_fallback = False


def _check_impl(impl: str, where: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"{where}: impl must be one of {IMPLS}, got {impl!r}")
    return impl


def set_default_impl(impl: str) -> None:
    """Set the implementation used by ops called with ``impl=None`` ("auto" | "cuda" | "ref")."""
    global _default_impl
    _default_impl = _check_impl(impl, "set_default_impl")


def get_default_impl() -> str:
    return _default_impl


def use_cuda(op: str, impl: Optional[str], x: torch.Tensor) -> bool:
    """True when `op` on `x` should run our CUDA kernel, False for the reference path.

    May trigger the (once per process) lazy build of the extension.
    """
    global _warned_fallback
    impl = _check_impl(_default_impl if impl is None else impl, op)
    if impl == "ref":
        return False
    if impl == "cuda":
        if not x.is_cuda:
            raise RuntimeError(f"{op}: impl='cuda' needs CUDA tensors, got x on {x.device}")
        build.load_plugin()  # raises RuntimeError with the build error
        return True
    if not x.is_cuda:
        return False
    try:
        build.load_plugin()
        return True
    except RuntimeError as err:
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"stylegan2.ops: CUDA kernels unavailable, using the reference ops "
                          f"({build.first_line(err)}; impl='cuda' shows the full error)",
                          RuntimeWarning, stacklevel=3)
        return False


def active_impl() -> dict:
    """Report which implementation runs where.

    Returns ``{"default": the default impl, "cpu": "ref", "cuda": what CUDA tensors get,
    "build": build.status()}``; "cuda" is "cuda", "ref", or "cuda (not built yet)" while the lazy
    build has not been attempted in this process.
    """
    state = build.status()
    if _default_impl == "ref":
        on_cuda = "ref"
    elif state["state"] == "loaded":
        on_cuda = "cuda"
    elif state["state"] == "failed":
        on_cuda = "ref" if _default_impl == "auto" else "error"
    else:
        on_cuda = "cuda (not built yet)"
    return {"default": _default_impl, "cpu": "ref", "cuda": on_cuda, "build": state}
