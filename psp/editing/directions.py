"""Direction files: reading the public formats and reading/writing ours.

Formats read by `load_direction`:

* InterFaceGAN boundary, ``.npy`` or ``.pt`` holding one tensor/array of shape ``[D]``, ``[1, D]``
  (one vector for every W+ row) or ``[n_styles, D]`` (one per row).
* GANSpace PCA file as the e4e repository ships (``editings/ganspace_pca/*.pt``): a dict with
  ``comp`` (components, ``[k, 1, D]`` or ``[k, D]``), ``mean`` and ``std`` (``[k]``); pick a component
  with ``FILE.pt#INDEX``. The vector is ``comp[INDEX] * std[INDEX]``, so strength counts standard
  deviations along the component, as in e4e where an edit applies to a W+ row range.
* Ours (`save_direction`): a dict ``{"format": "psp-direction", "version": 1, "name", "vectors"
  [1 or n_styles, D], "layers" (list of rows or None), "generator_sha256", "strength_range"
  [lo, hi]}`` saved with torch.save; read back weights-only, so it never runs code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from psp.editing.errors import EditingError
from psp.io.atomic import atomic_write
from stylegan2.io import CheckpointFormatError, UnsafeCheckpointError, safe_load

FORMAT = "psp-direction"
VERSION = 1


@dataclass
class Direction:
    """A direction in W+: ``vectors`` ``[1, D]`` (every row) or ``[n_styles, D]`` (per row)."""

    name: str
    vectors: torch.Tensor
    layers: Optional[list[int]] = None
    generator_sha256: Optional[str] = None
    strength_range: tuple[float, float] = (-3.0, 3.0)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check_fits(self, n_styles: int, width: int, generator_sha256: Optional[str] = None) -> None:
        """Raise EditingError unless this direction fits a generator with these W+ dimensions."""
        rows, dim = self.vectors.shape
        if dim != width or rows not in (1, n_styles):
            raise EditingError(f"{self.source or self.name}: direction of shape {list(self.vectors.shape)}"
                               f" does not fit this generator's W+ [{n_styles}, {width}]")
        if self.layers is not None and (min(self.layers) < 0 or max(self.layers) >= n_styles):
            raise EditingError(f"{self.source or self.name}: layers {self.layers} outside W+ rows "
                               f"0-{n_styles - 1}")
        if generator_sha256 and self.generator_sha256 and self.generator_sha256 != generator_sha256:
            raise EditingError(f"{self.source or self.name}: made for another generator (sha256 "
                               f"{self.generator_sha256[:12]}..., this one is {generator_sha256[:12]}...)")


def save_direction(path: Path, direction: Direction) -> None:
    """Write ``direction`` in our format, atomically."""
    record = {"format": FORMAT, "version": VERSION, "name": direction.name,
              "vectors": direction.vectors.detach().to("cpu", torch.float32).contiguous().clone(),
              "layers": direction.layers, "generator_sha256": direction.generator_sha256,
              "strength_range": [float(x) for x in direction.strength_range], **direction.extra}
    atomic_write(Path(path), lambda f: torch.save(record, f))


def load_direction(spec: str) -> Direction:
    """Read ``FILE`` or ``FILE#INDEX`` (GANSpace component / row of a multi-direction file)."""
    path_text, _, index_text = spec.partition("#")
    path = Path(path_text)
    index: Optional[int] = None
    if index_text:
        try:
            index = int(index_text)
        except ValueError:
            raise EditingError(f"{spec}: '#{index_text}' is not a component index (write FILE#3)") from None
    try:
        data: Any = (torch.from_numpy(np.load(path, allow_pickle=False)) if path.suffix == ".npy"
                     else safe_load(path, map_location="cpu"))
    except FileNotFoundError:
        raise EditingError(f"{path}: direction file not found") from None
    except (UnsafeCheckpointError, CheckpointFormatError) as exc:
        raise EditingError(str(exc)) from None
    except (OSError, ValueError, EOFError) as exc:
        raise EditingError(f"{path}: not a readable direction file ({type(exc).__name__})") from None
    return _interpret(data, path, index)


def _interpret(data: Any, path: Path, index: Optional[int]) -> Direction:

    def pick(table: torch.Tensor, what: str) -> torch.Tensor:
        if index is None:
            raise EditingError(f"{path}: holds {table.shape[0]} {what}; pick one with {path}#INDEX")
        if not 0 <= index < table.shape[0]:
            raise EditingError(f"{path}: {what} index {index} out of range 0-{table.shape[0] - 1}")
        return table[index]

    if isinstance(data, dict) and data.get("format") == FORMAT:
        vectors = data.get("vectors")
        if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2:
            raise EditingError(f"{path}: 'vectors' must be a [1 or n_styles, D] tensor")
        rng = data.get("strength_range") or (-3.0, 3.0)
        return Direction(str(data.get("name", path.stem)), vectors.float(), data.get("layers"),
                         data.get("generator_sha256"), (float(rng[0]), float(rng[1])), str(path))
    if isinstance(data, dict) and {"comp", "std"} <= set(data):
        comp, std = torch.as_tensor(data["comp"]).float(), torch.as_tensor(data["std"]).float().flatten()
        comp = comp.reshape(comp.shape[0], -1)
        vector = pick(comp, "GANSpace components") * pick(std, "GANSpace components")
        return Direction(f"{path.stem}#{index}", vector[None], None, None, (-3.0, 3.0), str(path))
    if isinstance(data, torch.Tensor) and data.is_floating_point():
        vectors = data.float()
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim == 3 and vectors.shape[0] == 1:
            vectors = vectors[0]
        if vectors.ndim != 2:
            raise EditingError(f"{path}: boundary of shape {list(data.shape)}; expected [D], [1, D] "
                               "or [n_styles, D]")
        return Direction(path.stem, vectors, None, None, (-3.0, 3.0), str(path))
    raise EditingError(f"{path}: not a direction file (expected a boundary tensor, a GANSpace dict "
                       f"with 'comp'/'mean'/'std', or a {FORMAT} file)")
