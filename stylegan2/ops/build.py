"""Lazy, cached, once-per-process build of our CUDA extension (the sources in csrc/).

- Nothing compiles at import: `load_plugin()` builds on the first op call on a CUDA tensor.
- The build directory is ``<root>/stylegan2_ops_<key>``, where root is ``$TORCH_EXTENSIONS_DIR``
  or torch's default (``~/.cache/torch_extensions``) and key hashes the sources, the Python, torch
  and CUDA versions and the architecture list the build compiles for (`resolved_arch_list`:
  ``$TORCH_CUDA_ARCH_LIST`` as given, else the visible GPUs'); changing any of them gives a fresh
  directory instead of a stale library, and nodes with different GPUs sharing one cache each
  keep their own library instead of rebuilding each other's.
- ``TORCH_CUDA_ARCH_LIST`` is never overwritten. Only a build with the variable unset and no GPU
  visible (a Docker build) sets it, to `DEFAULT_ARCH_LIST`, for its own compile.
- Each build records the architectures it covers in ``build_info.json``; a later process whose
  GPUs are covered imports the library directly, without re-running the compiler (also the
  ahead-of-time `DEFAULT_ARCH_LIST` build), holding the lock file torch's build holds
  (``<build dir>/lock``), so it never imports a library that another process is writing.
- A ``$TORCH_CUDA_ARCH_LIST`` that does not cover a visible GPU is refused before compiling
  (its kernels would fail with "no kernel image is available"): ``impl="auto"`` falls back to
  the reference ops, ``impl="cuda"`` raises with the fix.
- A failure is remembered: the build is attempted at most once per process.
"""
import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
ARCH_ENV = "TORCH_CUDA_ARCH_LIST"
INFO_FILE = "build_info.json"


@dataclass
class _State:
    """Per-process build state; tests swap in a fresh one."""

    plugin: Optional[ModuleType] = None
    error: Optional[RuntimeError] = None
    source: Optional[str] = None  # "compiled" or "cached" once loaded


_STATE = _State()
_LOCK = threading.Lock()


def source_files(csrc: Path = CSRC) -> List[Path]:
    """All files that go into the build (compiled sources and headers), sorted."""
    return sorted(p for p in csrc.iterdir() if p.suffix in SOURCE_SUFFIXES)


def source_hash(files: Optional[Iterable[Path]] = None) -> str:
    """sha256 (hex) over the names and contents of `files` (default: `source_files()`)."""
    h = hashlib.sha256()
    for path in source_files() if files is None else files:
        h.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


def resolved_arch_list() -> str:
    """The architectures a build in this process compiles for: ``$TORCH_CUDA_ARCH_LIST`` as
    given, else the visible GPUs' (``"8.0;9.0"``), else `DEFAULT_ARCH_LIST`."""
    arch_list = os.environ.get(ARCH_ENV)
    if arch_list is not None:
        return arch_list
    return ";".join(f"{major}.{minor}" for major, minor in visible_capabilities()) or DEFAULT_ARCH_LIST


def build_key(files: Optional[Iterable[Path]] = None, arch_list: Optional[str] = None) -> str:
    """16 hex digits naming a build: sources, Python/torch/CUDA versions and the arch list
    (default `resolved_arch_list()`)."""
    parts = [source_hash(files), f"py{sys.version_info[0]}.{sys.version_info[1]}",
             torch.__version__, str(torch.version.cuda),
             resolved_arch_list() if arch_list is None else arch_list]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def extensions_root() -> Path:
    """``$TORCH_EXTENSIONS_DIR``, or torch's default (``~/.cache/torch_extensions``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root
        root = get_default_build_root()
    return Path(root)


def build_dir(arch_list: Optional[str] = None) -> Path:
    """Where the extension for the current sources and environment (and `arch_list`, default
    `resolved_arch_list()`) is or will be built."""
    return extensions_root() / f"stylegan2_ops_{build_key(arch_list=arch_list)}"


def status() -> dict:
    """``{"state": "not attempted" | "loaded" | "failed", "build_dir": str, "error": str | None,
    "source": "compiled" | "cached" | None}`` (source: how the loaded library got here)."""
    state = _STATE
    return {"state": "loaded" if state.plugin else "failed" if state.error else "not attempted",
            "build_dir": str(build_dir()),
            "error": None if state.error is None else str(state.error),
            "source": state.source if state.plugin else None}


def load_plugin() -> ModuleType:
    """The compiled extension, built or loaded on the first call.

    Raises RuntimeError (the same one on every later call: the attempt is not repeated).
    """
    with _LOCK:
        state = _STATE
        if state.plugin is None and state.error is None:
            try:
                state.plugin, state.source = _load(ahead_of_time=False)
            except Exception as err:  # compiler, linker and import errors all mean "no kernels"
                state.error = RuntimeError(f"building the CUDA extension in {build_dir()} failed: "
                                           f"{type(err).__name__}: {err}")
                state.error.__cause__ = err
        if state.error is not None:
            raise state.error
        return state.plugin


def build_ahead_of_time(verbose: bool = True) -> Path:
    """Compile now, for the GPUs that will run it (no GPU needed); return the library path.

    Used by ``python -m stylegan2.ops build``. Errors propagate.
    """
    with _LOCK:
        _STATE.plugin, _STATE.source = _load(ahead_of_time=True, verbose=verbose)
        _STATE.error = None
        return Path(_STATE.plugin.__file__)


def _load(ahead_of_time: bool, verbose: bool = False) -> Tuple[ModuleType, str]:
    """(the module, "cached" | "compiled")."""
    caps = visible_capabilities()
    given = os.environ.get(ARCH_ENV)
    if not ahead_of_time and given is not None and caps and not arch_list_covers(given, caps):
        missing = [f"{major}.{minor}" for major, minor in caps if not arch_list_covers(given, [(major, minor)])]
        raise RuntimeError(f"{ARCH_ENV}={given!r} does not cover the visible GPU architecture(s) "
                           f"{', '.join(missing)} (the kernels would fail with 'no kernel image is "
                           f"available'); add them to {ARCH_ENV} or unset it")
    arch_list = resolved_arch_list()
    out = build_dir(arch_list)
    if not ahead_of_time and caps:
        # The ahead-of-time build (no GPU, variable unset: DEFAULT_ARCH_LIST) serves every GPU it covers.
        candidates = [out] if given is not None or arch_list == DEFAULT_ARCH_LIST else [out, build_dir(DEFAULT_ARCH_LIST)]
        for candidate in candidates:
            module = _import_if_covered(candidate, caps)
            if module is not None:
                return module, "cached"
    out.mkdir(parents=True, exist_ok=True)
    with _env_default(ARCH_ENV, arch_list):
        module = _compile(out.name, [str(p) for p in source_files() if p.suffix in (".cpp", ".cu")],
                          out, verbose)
    _write_info(out, {"arch_list": arch_list, "library": Path(module.__file__).name,
                      "torch": torch.__version__, "cuda": torch.version.cuda})
    return module, "compiled"


def _import_if_covered(out: Path, caps: Sequence[Tuple[int, int]]) -> Optional[ModuleType]:
    """The library built in `out` if its recorded arch list covers `caps`, else None. Holds the
    lock file that torch's build holds, so a library being (re)written is never imported."""
    if not (out / INFO_FILE).is_file():
        return None
    from filelock import FileLock
    with FileLock(str(out / "lock")):
        info = _read_info(out)
        if not info or not arch_list_covers(info["arch_list"], caps):
            return None
        library = out / info["library"]
        return _import_library(out.name, library) if library.is_file() else None


def first_line(err: BaseException) -> str:
    """``"<Type>: <first non-empty line, at most 300 characters>"``: compiler errors run to
    hundreds of lines."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return f"{type(err).__name__}: {line if len(line) <= 300 else line[:297] + '...'}"


def _compile(name: str, sources: Sequence[str], out: Path, verbose: bool) -> ModuleType:
    """torch's JIT build (ninja); a separate function so tests can replace it."""
    from torch.utils.cpp_extension import CUDA_HOME, load
    if CUDA_HOME is None:
        raise RuntimeError("no CUDA toolkit found; set CUDA_HOME (e.g. /usr/local/cuda)")
    return load(name=name, sources=list(sources), build_directory=str(out), verbose=verbose,
                extra_cflags=["-O3"], extra_cuda_cflags=["-O3"])


@contextmanager
def _env_default(key: str, value: str):
    """Set `key` to `value` only while unset, and unset it again afterwards."""
    was_set = key in os.environ
    if not was_set:
        os.environ[key] = value
    try:
        yield
    finally:
        if not was_set:
            os.environ.pop(key, None)


def visible_capabilities() -> List[Tuple[int, int]]:
    if not torch.cuda.is_available():
        return []
    return sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})


def arch_list_covers(arch_list: str, capabilities: Sequence[Tuple[int, int]]) -> bool:
    """Whether a library built for `arch_list` (TORCH_CUDA_ARCH_LIST syntax) runs on all of
    `capabilities`: a cubin for X.y runs on X.z with z >= y; "+PTX" JIT-compiles on any newer GPU;
    arch-specific "X.Ya" runs only on X.Y. Unknown entries (e.g. "Ampere") cover nothing, which
    only costs a rebuild."""
    entries = []
    for token in re.split(r"[;\s]+", arch_list.strip()):
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", token)
        if m:
            entries.append((int(m[1]), int(m[2]), bool(m[3]), bool(m[4])))

    def runs_on(cap):
        for major, minor, specific, ptx in entries:
            if (major, minor) == cap:
                return True
            if not specific and major == cap[0] and minor <= cap[1]:
                return True
            if ptx and (major, minor) <= cap:
                return True
        return False

    return all(runs_on(tuple(c)) for c in capabilities)


def _read_info(out: Path) -> Optional[dict]:
    try:
        return json.loads((out / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_info(out: Path, info: dict) -> None:
    # Several DDP ranks may finish together: write to a private file, then rename atomically.
    tmp = out / f"{INFO_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, out / INFO_FILE)


def _import_library(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
