"""Delta files on disk: written atomically, in the weights-only format of ``stylegan2.delta``."""
from __future__ import annotations

from pathlib import Path

from psp.io.atomic import atomic_torch_save
from stylegan2.delta import GeneratorDelta, delta_to_record


def save_delta(path: Path, delta: GeneratorDelta) -> None:
    """Write ``delta`` to ``path`` (``stylegan2.delta.DELTA_SUFFIX`` by convention); a crash leaves
    the old file or the complete new one. Read it back with ``stylegan2.delta.load_delta``."""
    atomic_torch_save(delta_to_record(delta), path)
