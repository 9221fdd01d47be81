"""A restricted unpickler for NVIDIA's network pickles (``network-snapshot-*.pkl``).

NVIDIA's ``torch_utils.persistence`` pickles every network module as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {"type": "class", "version": 6, "module_src": <the module's Python source>,
"class_name": <e.g. "SynthesisLayer">, "state": <the module's __dict__>}``; NVIDIA's loader
executes ``module_src`` to rebuild the class. Here that call builds a `PersistentRecord` instead:
the source is kept as a string and never compiled. The state holds ``_parameters``, ``_buffers``
and ``_modules`` (OrderedDicts), the plain attributes, and ``_init_args`` / ``_init_kwargs``
(persistence stores the constructor arguments).

Tensors inside are pickled by torch's own reduce functions: ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` and ``torch.storage._load_from_bytes`` (whose torch version
calls ``torch.load(weights_only=False)`` on the embedded bytes; ours uses ``weights_only=True``).
``dnnlib.util.EasyDict`` (the generator's ``mapping_kwargs`` / ``synthesis_kwargs``) becomes a
plain dict. Any other global the file names is refused with `UnsafeCheckpointError`.
"""
import collections
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from ..io import PathLike, UnsafeCheckpointError

RECONSTRUCT = ("torch_utils.persistence", "_reconstruct_persistent_obj")


@dataclass
class PersistentRecord:
    """An NVIDIA persistent-class instance as plain data: never callable, never runs anything.

    ``params`` / ``buffers`` / ``modules``: name -> tensor / tensor / record (None entries kept);
    ``attrs``: the other instance attributes; ``init_args`` / ``init_kwargs``: constructor arguments;
    ``module_src``: the embedded source, as text only.
    """

    class_name: str
    module_src: str
    params: Dict[str, Any] = field(default_factory=dict)
    buffers: Dict[str, Any] = field(default_factory=dict)
    modules: Dict[str, Any] = field(default_factory=dict)
    attrs: Dict[str, Any] = field(default_factory=dict)
    init_args: tuple = ()
    init_kwargs: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name}, modules={list(self.modules)})"


class _PlainDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict; pickle's BUILD step may pass attributes."""

    def __setstate__(self, state):
        if state:
            self.update(state)


def _reconstruct(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise UnsafeCheckpointError(
            "refused: a torch_utils.persistence record is not of type 'class' with a state "
            f"(found {type(meta).__name__} with keys {sorted(meta) if isinstance(meta, dict) else '-'})")
    state = dict(meta["state"] or {})
    record = PersistentRecord(class_name=str(meta.get("class_name")),
                              module_src=str(meta.get("module_src", "")))
    record.params = dict(state.pop("_parameters", {}) or {})
    record.buffers = dict(state.pop("_buffers", {}) or {})
    record.modules = dict(state.pop("_modules", {}) or {})
    record.init_args = tuple(state.pop("_init_args", ()) or ())
    record.init_kwargs = dict(state.pop("_init_kwargs", {}) or {})
    record.attrs = state
    return record


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafeCheckpointError(f"refused: a tensor is rebuilt from a {type(storage).__name__}, "
                                    "not a torch storage")
    if backward_hooks:
        raise UnsafeCheckpointError("refused: a tensor carries backward hooks (callables)")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False,
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafeCheckpointError(f"refused: a parameter is rebuilt from a {type(data).__name__}")
    if backward_hooks or state:
        raise UnsafeCheckpointError("refused: a parameter carries backward hooks or extra state")
    return torch.nn.Parameter(data, requires_grad=False)


def _load_from_bytes(data):
    if not isinstance(data, bytes):
        raise UnsafeCheckpointError("refused: torch.storage._load_from_bytes got no bytes")
    # torch's own version unpickles these bytes with full trust (weights-only mode off).
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise UnsafeCheckpointError(
            "refused: an embedded tensor storage is not plain tensor data"
            + (f" (it names '{found.group(1)}')" if found else "")) from None


ALLOWED = {
    RECONSTRUCT: _reconstruct,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the `ALLOWED` globals, to our own safe functions; refuses everything else."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.source}: refused to load: the pickle names the Python object "
                f"'{module}.{name}', and unpickling would call it; an NVIDIA network pickle needs "
                "only torch_utils.persistence records, tensors and plain containers") from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self.source}: refused to load: the pickle uses a persistent "
                                    "id, which NVIDIA network pickles do not")


def is_nvidia_pickle(path: PathLike) -> bool:
    """True when the file is a plain pickle (not torch's zip format) naming NVIDIA's persistence
    module near its start (checked by bytes: nothing is unpickled)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return head[:1] == b"\x80" and b"torch_utils.persistence" in head


def load_nvidia_pickle(path: PathLike) -> Any:
    """Unpickle ``path`` with `RestrictedUnpickler`: NVIDIA modules come back as `PersistentRecord`s.

    Raises FileNotFoundError, `UnsafeCheckpointError` (a disallowed global), or ValueError (not a
    readable pickle).
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"generator pickle not found: {source}")
    with open(source, "rb") as f:
        try:
            return RestrictedUnpickler(f, source).load()
        except UnsafeCheckpointError as err:
            if str(err).startswith(source):
                raise
            raise UnsafeCheckpointError(f"{source}: {err}") from None
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as err:
            raise ValueError(f"{source}: not a readable NVIDIA network pickle "
                             f"({type(err).__name__}: {err}); a truncated download?") from None
