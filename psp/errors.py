"""The toolkit's user-facing errors: one hierarchy, raised explicitly where user input is checked.

    UserError                 root (defined in stylegan2.errors, the lowest layer)
    ├── ConfigError           a config file, key or override
    ├── CheckpointError       a weights file (UnsafeCheckpointError, CheckpointFormatError)
    └── InputError            command-line arguments, input images, latent files, folders

Entry points (``psp.cli``) catch ``UserError`` alone and print its one-line message with exit
code 2; every other exception is a bug and keeps its traceback.
"""
from stylegan2.errors import CheckpointError, CheckpointFormatError, UnsafeCheckpointError, UserError

__all__ = ["UserError", "ConfigError", "CheckpointError", "CheckpointFormatError", "UnsafeCheckpointError",
           "InputError", "first_line"]


class ConfigError(UserError, ValueError):
    """A mistake in a config file or a ``key=value`` override."""


class InputError(UserError, ValueError):
    """A bad command-line argument, input file or output folder."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
