"""The CUDA kernels' own source, compiled for the CPU execution model (tests only).

`load()` builds ``csrc/emulation/emulated_ops.cpp`` -- which includes the kernel headers
``csrc/bias_act_kernel.h`` and ``csrc/upfirdn2d_kernel.h`` that the ``.cu`` launchers include --
with the host C++ compiler (no CUDA toolkit) and returns the extension module:

- ``bias_act(...)`` / ``upfirdn2d(...)``: the signatures of the CUDA extension (``csrc/ops.h``),
  taking CPU tensors; the kernels run on emulated threads (``csrc/emulation/cpu_emulation.h``).
- ``set_launch_shape(threads, max_blocks)`` / ``launch_shape()``: the launch configuration
  (default 32 threads, at most 3 blocks: small, so that every grid-stride loop wraps).
- ``grid_stride_fits_int32(n, blocks, threads)``, ``upfirdn2d_indices_fit_int32(...)``: the
  kernels' index-type choice; ``upfirdn2d_max_taps()``; ``barrier_selftest(blocks, threads)``.

The build lands in ``<extensions root>/stylegan2_ops_cpu_<key>`` (the root as for the CUDA build,
`build.extensions_root`), the key hashing every kernel source and the emulation, so it compiles
once per machine and source version (about a minute) and is imported directly afterwards.
"""
import hashlib
from pathlib import Path
from types import ModuleType
from typing import List, Optional

from . import build

EMULATION = build.CSRC / "emulation"
SOURCE = EMULATION / "emulated_ops.cpp"

_module: Optional[ModuleType] = None


def source_files() -> List[Path]:
    """Everything the emulation build reads: the kernel sources and the emulation itself."""
    return build.source_files() + build.source_files(EMULATION)


def build_dir() -> Path:
    key = hashlib.sha256(build.source_hash(source_files()).encode()).hexdigest()[:16]
    return build.extensions_root() / f"stylegan2_ops_cpu_{key}"


def load(verbose: bool = False) -> ModuleType:
    """The emulation extension, compiled on first use (once per machine and source version)."""
    global _module
    if _module is None:
        from torch.utils.cpp_extension import load as load_extension
        out = build_dir()
        out.mkdir(parents=True, exist_ok=True)
        _module = load_extension(name=out.name, sources=[str(SOURCE)], build_directory=str(out),
                                 extra_cflags=["-O1"], with_cuda=False, verbose=verbose)
    return _module
