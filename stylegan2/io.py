"""Safe checkpoint reading, shared by `stylegan2` and `psp`.

Every checkpoint goes through ``torch.load(weights_only=True)``: tensors and plain containers only.
A pickle may name any Python callable, and unpickling calls it, so a file that needs anything
else is refused rather than trusted. The one extra type allowed is ``argparse.Namespace`` (the
``args`` entry of rosinality training checkpoints), and only for the duration of the call.
"""
import argparse
import hashlib
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Union

import torch

from .errors import CheckpointError, CheckpointFormatError, CheckpointNotFoundError, UnsafeCheckpointError

PathLike = Union[str, "os.PathLike[str]"]

# The only non-plain type a released checkpoint holds: rosinality training files store their
# command-line arguments (``args``) as an argparse.Namespace.
SAFE_GLOBALS = (argparse.Namespace,)


# What a user can do about a file torch.load cannot parse.
_FORMAT_HINT = "; a truncated download or a file of another format? download it again or check the path"


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with ``argparse.Namespace`` allowed.

    Raises:
        CheckpointNotFoundError: no such file, or a folder (also a FileNotFoundError).
        UnsafeCheckpointError: the file needs another global (class or function) to load.
        CheckpointFormatError: the file is not a PyTorch checkpoint (or is truncated).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if os.path.isdir(path):
        raise CheckpointNotFoundError(f"checkpoint path is a directory, not a file: {path}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it needs the Python object '{found.group(1)}', and a "
                "pickle can execute code while loading; only tensors, plain containers and "
                "argparse.Namespace are allowed (re-save the file with state dicts only)") from None
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint "
                                    f"({_unpickling_reason(err)}){_FORMAT_HINT}") from None
    except PermissionError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, struct.error,
            zipfile.BadZipFile, OSError) as err:  # OSError: torch's zip reader on a truncated file
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint "
                                    f"({type(err).__name__}: {_first_line(err)}){_FORMAT_HINT}") from None


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The informative part of torch's long weights-only error text."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
    return found.group(1).strip() if found else _first_line(err)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else "empty or truncated file"


def sha256_file(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
