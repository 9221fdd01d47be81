"""Command-line entry points. Each CLI parses, loads the config and hands over; no model logic."""
from __future__ import annotations

import functools
import sys
from typing import Callable

from psp.config import ConfigError


class UsageError(ValueError):
    """A user mistake on the command line (missing checkpoint, empty input, ...); exit code 2."""


def report_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a CLI ``main``: config and usage mistakes become one line on stderr and exit code 2.

    Only our own user-facing exceptions are caught; a bug still shows its traceback.
    """
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (ConfigError, UsageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapper
