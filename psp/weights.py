"""Safe checkpoint IO for the psp package.

Every load in the toolkit goes through :func:`safe_load` (``torch.load(weights_only=True)`` with an
allow-list of exactly ``argparse.Namespace``, the one non-plain type the official files hold). A file
that needs arbitrary code to unpickle is refused with :class:`UnsafeCheckpointError`. The loaders
live in ``stylegan2.io`` because the generator package must not import ``psp``; this module is the
psp-side entry point and the home of ``python -m psp.weights fetch NAME`` (see ``psp.fetch``).
"""
from __future__ import annotations

import sys

from stylegan2.io import (
    SAFE_GLOBALS,
    CheckpointFormatError,
    UnsafeCheckpointError,
    safe_load,
    sha256_file,
)

__all__ = ["SAFE_GLOBALS", "CheckpointFormatError", "UnsafeCheckpointError", "safe_load", "sha256_file"]


def main(argv: list[str] | None = None) -> int:
    """``python -m psp.weights fetch|list|check ...``: the weights tool of ``psp.fetch``."""
    from psp.fetch import main as fetch_main

    return fetch_main(argv)


if __name__ == "__main__":
    sys.exit(main())
