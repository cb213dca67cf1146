"""Failures a user can fix, and the command line's exit codes. Imports nothing (the CLI catches these
before it has loaded anything heavy)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

EXIT_OK = 0  # every input attributed (or the command did all it was asked)
EXIT_PARTIAL = 1  # some inputs unreadable, each named on stderr; the others attributed
EXIT_FAILED = 2  # nothing done, or an output could not be written: bad arguments, model, calibration, disk


class GenoriginError(Exception):
    """A failure said in one line naming what to fix; the command line prints it and exits 2."""


class CliError(GenoriginError):
    """Arguments that cannot work together."""


def print_problems(errors: Iterable[str], notes: Iterable[str] = ()) -> None:
    """One ``error:`` line per unreadable input, one ``note:`` line per input passed over, on stderr."""
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
