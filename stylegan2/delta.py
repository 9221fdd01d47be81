"""Compact generator deltas: a fine-tuned generator stored as per-layer weight changes of its base.

A generator tuned on one image (pivotal tuning) differs from its base by small, highly structured
changes; storing the whole tuned copy costs about 120 MB for FFHQ 1024. A delta stores, per
parameter that changed, ``tuned - base``:

- as a truncated SVD ``u @ v`` (``u`` [m, r], ``v`` [r, n]) of the change reshaped to 2-D, where
  ``m`` is the parameter's first dimension of size > 1 and everything before it (a conv weight
  [1, out, in, k, k] becomes [out, in*k*k]; an EqualLinear weight [out, in] stays as it is);
- dense, for 1-D and small tensors (biases, noise strengths, the 3-row ToRGB weights) and
  whenever ``r * (m + n) >= m * n`` (the factors would be no smaller; in particular at full rank).

The best rank-``r`` approximation in the Frobenius norm is the truncated SVD (Eckart-Young), so the
error of a layer is the root sum of its discarded squared singular values.

A delta names its base by ``stylegan2.fingerprint.generator_sha256`` and applies to that base
only. Files are plain ``torch.save`` records of tensors, strings and numbers (format in
:func:`delta_to_record`), read back with ``torch.load(weights_only=True)`` and a schema check, so
loading one never runs code. Applying never modifies the base: :func:`apply_delta` returns a
frozen copy.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError, CheckpointNotFoundError
from .fingerprint import generator_sha256
from .io import safe_load

PathLike = Union[str, "os.PathLike[str]"]

DELTA_FORMAT = "stylegan2-generator-delta"
DELTA_VERSION = 1
# File suffix of delta files: not a latent suffix, so latent folders can hold them.
DELTA_SUFFIX = ".delta"


class DeltaFileError(CheckpointError):
    """A delta file that cannot be used (corrupt, unsafe, or made for another generator); one line."""


@dataclass
class LayerDelta:
    """The change of one parameter of ``shape``: ``dense`` (the full change), or factors ``u`` [m, r]
    and ``v`` [r, n] whose product, reshaped to ``shape``, is the (approximate) change."""

    shape: tuple[int, ...]
    dense: Optional[torch.Tensor] = None
    u: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None

    def tensor(self) -> torch.Tensor:
        """The change as a tensor of ``shape`` (float32, on the factors' device)."""
        if self.dense is not None:
            return self.dense.float()
        return (self.u.float() @ self.v.float()).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        parts = [self.dense] if self.dense is not None else [self.u, self.v]
        return sum(p.numel() * p.element_size() for p in parts)


@dataclass
class GeneratorDelta:
    """Per-parameter changes (state-dict name -> :class:`LayerDelta`) of the generator whose
    ``generator_sha256`` is ``base_sha256``. ``rank``: the SVD rank used (0: all dense).
    ``meta``: plain JSON-like facts (tuning settings, sources), stored with the file."""

    base_sha256: str
    rank: int
    layers: dict[str, LayerDelta]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (the file is this plus a few kB of names)."""
        return sum(layer.nbytes for layer in self.layers.values())


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view [m, n] of a parameter of ``shape`` (module docstring); 1-D: [1, n]."""
    dims = list(shape)
    first = next((i for i, d in enumerate(dims) if d > 1), len(dims) - 1)
    m = math.prod(dims[:first + 1])
    return m, math.prod(dims) // max(m, 1)


def compress_delta(base: nn.Module, tuned: nn.Module, rank: int,
                   base_sha256: Optional[str] = None, meta: Optional[dict[str, Any]] = None) -> GeneratorDelta:
    """The delta ``tuned - base`` over their parameters, each layer at most ``rank`` (0: dense).

    ``base`` and ``tuned`` must have the same parameter names and shapes. Unchanged parameters are
    left out. ``base_sha256``: the base's fingerprint when already known (it is computed otherwise).
    """
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"compress_delta: rank must be an integer >= 0, got {rank!r}")
    tuned_params = dict(tuned.named_parameters())
    layers: dict[str, LayerDelta] = {}
    with torch.no_grad():
        for name, weight in base.named_parameters():
            change = (tuned_params[name].detach().float() - weight.detach().float()).cpu()
            if not torch.any(change != 0):
                continue
            layers[name] = _compress_layer(change, rank)
    return GeneratorDelta(base_sha256 or generator_sha256(base), rank, layers, dict(meta or {}))


def _compress_layer(change: torch.Tensor, rank: int) -> LayerDelta:
    shape = tuple(change.shape)
    m, n = matrix_shape(shape)
    if rank == 0 or change.ndim < 2 or rank * (m + n) >= m * n:
        return LayerDelta(shape, dense=change.contiguous())
    u, s, vh = torch.linalg.svd(change.reshape(m, n), full_matrices=False)
    # The singular values go into u: one factor fewer to store.
    return LayerDelta(shape, u=(u[:, :rank] * s[:rank]).contiguous(), v=vh[:rank].contiguous())


def apply_delta(base: nn.Module, delta: GeneratorDelta, base_sha256: Optional[str] = None,
                source: str = "delta") -> nn.Module:
    """A frozen copy of ``base`` with ``delta`` added to its parameters; ``base`` is not modified.

    The copy keeps ``base``'s class (e.g. the inference rewrite) and device. Raises DeltaFileError
    naming ``source`` when ``delta`` was made for another generator or does not fit this one.
    ``base_sha256``: the base's fingerprint when already known.
    """
    sha = base_sha256 or generator_sha256(base)
    if sha != delta.base_sha256:
        raise DeltaFileError(f"{source}: made for generator sha256 {delta.base_sha256[:12]}..., this "
                             f"generator is {sha[:12]}...; use the checkpoint the delta was tuned from")
    params = dict(base.named_parameters())
    for name, layer in delta.layers.items():
        if name not in params or tuple(params[name].shape) != layer.shape:
            found = list(params[name].shape) if name in params else "absent"
            raise DeltaFileError(f"{source}: layer '{name}' of shape {list(layer.shape)} does not fit "
                                 f"this generator ({found})")
    tuned = copy.deepcopy(base)
    tuned_params = dict(tuned.named_parameters())
    with torch.no_grad():
        for name, layer in delta.layers.items():
            target = tuned_params[name]
            target.add_(layer.tensor().to(target.device, target.dtype))
    return tuned.requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------- files


def delta_to_record(delta: GeneratorDelta) -> dict[str, Any]:
    """The file content: ``{"format", "version", "base_sha256", "rank", "meta", "layers"}`` where
    ``layers[name]`` is ``{"shape": [ints], "dense": tensor}`` or ``{"shape", "u", "v"}`` (CPU tensors)."""
    layers = {}
    for name, layer in delta.layers.items():
        entry: dict[str, Any] = {"shape": list(layer.shape)}
        if layer.dense is not None:
            entry["dense"] = layer.dense.detach().cpu()
        else:
            entry["u"], entry["v"] = layer.u.detach().cpu(), layer.v.detach().cpu()
        layers[name] = entry
    return {"format": DELTA_FORMAT, "version": DELTA_VERSION, "base_sha256": delta.base_sha256,
            "rank": delta.rank, "meta": dict(delta.meta), "layers": layers}


def load_delta(path: PathLike) -> GeneratorDelta:
    """Read a delta file (weights only, schema-checked); DeltaFileError with a one-line reason."""
    source = os.fspath(path)
    try:
        record = safe_load(source, map_location="cpu")
    except CheckpointNotFoundError:
        raise DeltaFileError(f"{source}: generator delta file not found (tune again with infer.py "
                             "--tune-generator, or render with the base generator)") from None
    except CheckpointError as exc:  # unsafe (a pickle naming code) or not a torch file: "<path>: <why>"
        raise DeltaFileError(str(exc)) from None
    return delta_from_record(record, source)


def delta_from_record(record: Any, source: str = "delta") -> GeneratorDelta:
    """Check a loaded record against the format of :func:`delta_to_record` and build the delta."""
    def bad(reason: str) -> DeltaFileError:
        return DeltaFileError(f"{source}: not a usable generator delta ({reason}); make it again with "
                              "infer.py --tune-generator")

    if not isinstance(record, dict) or record.get("format") != DELTA_FORMAT:
        raise bad(f"no '{DELTA_FORMAT}' format tag")
    if record.get("version") != DELTA_VERSION:
        raise bad(f"version {record.get('version')!r}, this toolkit reads version {DELTA_VERSION}")
    sha, rank, meta, layers = (record.get(k) for k in ("base_sha256", "rank", "meta", "layers"))
    if not (isinstance(sha, str) and len(sha) == 64):
        raise bad("'base_sha256' is not a sha256 hex string")
    if not (isinstance(rank, int) and rank >= 0):
        raise bad("'rank' is not an integer >= 0")
    if not isinstance(meta, dict) or not isinstance(layers, dict):
        raise bad("'meta' and 'layers' must be dicts")
    return GeneratorDelta(sha, rank, {name: _layer_from_entry(name, entry, bad) for name, entry in layers.items()},
                          meta)


def _layer_from_entry(name: Any, entry: Any, bad) -> LayerDelta:
    if not isinstance(name, str) or not isinstance(entry, dict):
        raise bad(f"layer {name!r} is not a name with a dict")
    shape = entry.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise bad(f"layer '{name}': 'shape' is not a list of positive integers")
    shape = tuple(shape)
    tensors = {k: entry.get(k) for k in ("dense", "u", "v") if k in entry}
    for key, value in tensors.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            raise bad(f"layer '{name}': '{key}' is not a float tensor")
        if not torch.isfinite(value).all():
            raise bad(f"layer '{name}': '{key}' holds NaN or infinite values")
    if set(tensors) == {"dense"}:
        if tuple(tensors["dense"].shape) != shape:
            raise bad(f"layer '{name}': dense change of shape {list(tensors['dense'].shape)}, expected {list(shape)}")
        return LayerDelta(shape, dense=tensors["dense"])
    if set(tensors) == {"u", "v"}:
        u, v = tensors["u"], tensors["v"]
        m, n = matrix_shape(shape)
        if u.ndim != 2 or v.ndim != 2 or u.shape[0] != m or v.shape[1] != n or u.shape[1] != v.shape[0]:
            raise bad(f"layer '{name}': factors {list(u.shape)} @ {list(v.shape)} do not make [{m}, {n}]")
        return LayerDelta(shape, u=u, v=v)
    raise bad(f"layer '{name}': needs either 'dense' or both 'u' and 'v'")
