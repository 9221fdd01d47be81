"""What every command shares: the argument parser, the user-error boundary and the ops settings."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from psp.errors import InputError, UserError


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are InputErrors (one line, exit code 2) instead of usage dumps."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --res must not silently mean --resume
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise InputError(f"{message} (see {self.prog} --help)")


def report_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main``: a :class:`~psp.errors.UserError` becomes one line on stderr and
    exit code 2. Nothing else is caught, so a bug keeps its traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapper


def apply_ops(ops) -> None:
    """Apply the ``ops`` config section (``ops.impl``) for this process; every command calls it."""
    from stylegan2.ops import set_default_impl

    set_default_impl(ops.impl)
