"""Command-line entry points: all argument parsing lives here; each command parses, loads its
config and hands over to the library. ``psp`` (``psp.cli.main``) is the console script with one
subcommand per command; ``train.py`` and ``infer.py`` at the repository root call the same code.

Importing this package is what starting a command means, so it sets the one process-wide
setting the library itself never touches: transparent huge pages for PyTorch's large CPU
buffers (~15% faster at 1024 px on CPU: fewer page faults per fresh activation). PyTorch reads it
at its first allocation, so it must be set before anything imports torch; a value set by the
user wins.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
