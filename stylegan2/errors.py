"""The exceptions that mean "the user can fix this": a file, a key or a value named in one line.

``UserError`` is the root of the toolkit's user-facing errors (``psp.errors`` adds the config and
input kinds). Entry points turn exactly these into a one-line message and exit code 2; anything
else is a bug in our code and keeps its traceback. They also derive from ``ValueError`` so
callers of the Python API can catch them the usual way.
"""


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming the file, key or value and the fix."""


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be used as asked (wrong format, wrong shapes, missing entries)."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary code (a non-allow-listed global) to load, so it is refused."""


class CheckpointFormatError(CheckpointError):
    """The file is not a readable PyTorch checkpoint (truncated, or another format)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path names no file (or a folder)."""
