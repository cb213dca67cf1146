"""The images of a job: files, folders, globs and list files, expanded once on the driver.

A ``.txt`` input is a list file: one file, folder or glob per line (blank lines and lines starting with ``#``
are skipped), relative paths taken from the current folder as on the command line. Everything then goes
through ``genorigin.inputs.scan_inputs``, so a folder or glob gives the same files, in the same order, with
the same notes as ``genorigin attribute``. Each entry keeps the path as written (the result's ``source``) and
its absolute form (what the actors open, whatever their working folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from genorigin.decode import one_line
from genorigin.inputs import InputScan, scan_inputs

LIST_SUFFIX = ".txt"


@dataclass(frozen=True)
class Entry:
    """One image file of the job."""

    source: str  # as written: results are named by it, as `genorigin attribute` names them
    path: str  # absolute: what an actor opens


@dataclass
class Listing:
    """The job's entries, one-line errors for inputs that give none, and notes on what was passed over."""

    entries: list[Entry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def list_inputs(specs: Iterable[str]) -> Listing:
    """Expand list files, then files, folders and globs (``scan_inputs``); every file once."""
    expanded: list[str] = []
    errors: list[str] = []
    for spec in specs:
        spec = str(spec)
        if spec.endswith(LIST_SUFFIX) and os.path.isfile(spec):
            expanded.extend(_read_list(Path(spec), errors))
        else:
            expanded.append(spec)
    scan: InputScan = scan_inputs(expanded)
    entries = [Entry(str(p), os.path.abspath(p)) for p in scan.paths]
    return Listing(entries, errors + scan.errors, list(scan.skipped))


def _read_list(path: Path, errors: list[str]) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"{one_line(str(path))}: cannot read the list file ({getattr(exc, 'strerror', None) or exc})")
        return []
    lines = [ln.strip() for ln in text.splitlines()]
    specs = [ln for ln in lines if ln and not ln.startswith("#")]
    if not specs:
        errors.append(f"{one_line(str(path))}: the list file names no files")
    return specs
