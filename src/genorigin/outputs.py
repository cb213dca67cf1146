"""Output files of a run: every target checked before any compute, written atomically afterwards.

A run that would overwrite a file without ``--force``, write into a missing or read-only folder, or give two
inputs one reconstruction file name is refused before the first inversion step: minutes of compute are never
lost to an output that could not be written. Each file is written through ``genorigin.files`` (temp file in
the same folder, fsync, rename), so an interrupted or failed write leaves the old file or none, never half.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genorigin.errors import GenoriginError
from genorigin.files import atomic_write_bytes


class OutputError(GenoriginError):
    """An output target cannot be written (one line naming it)."""


@dataclass
class OutputPlan:
    """The files one run writes, by role; checked together before the compute."""

    files: dict[str, Path] = field(default_factory=dict)  # report, figure, csv … → path
    folders: dict[str, Path] = field(default_factory=dict)  # recon-dir …: created if missing
    recon: list[Path] = field(default_factory=list)  # one per input, inside folders["recon"]

    def all_files(self) -> list[Path]:
        return [*self.files.values(), *self.recon]

    def check(self, force: bool) -> None:
        """Refuse what cannot be written: a taken name (without ``force``), a folder in the way, a missing or
        read-only folder, two outputs with one name."""
        every = self.all_files()
        seen = Counter(os.path.abspath(p) for p in every)
        twice = [p for p, n in seen.items() if n > 1]
        if twice:
            raise OutputError(f"two outputs would be written to {twice[0]}: give them different names")
        for folder in self.folders.values():
            if folder.exists() and not folder.is_dir():
                raise OutputError(f"{folder} exists and is not a folder")
            _check_writable_folder(_nearest_existing(folder), folder)
        taken = [str(p) for p in every if p.exists()]
        if taken and not force:
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            raise OutputError(f"refusing to overwrite {', '.join(taken[:3])}{more}: it exists (--force replaces it)")
        for p in every:
            if p.is_dir():
                raise OutputError(f"{p} is a folder, not a file")
            if not any(p.parent == f for f in self.folders.values()):
                _check_writable_folder(_nearest_existing(p.parent), p)


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable_folder(folder: Path, target: Path) -> None:
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: {folder} is not writable")


def unique_names(sources: Sequence[str], suffix: str) -> list[str]:
    """One file name per source, ``<stem><suffix>``, longer only where names would collide.

    A colliding stem takes folders from its path until it is unique (``a/cat.png``, ``b/cat.png`` →
    ``a_cat``, ``b_cat``), then its suffix (``cat.png``, ``cat.jpg``), then its input's position.
    """
    paths = [Path(s) for s in sources]
    names = [p.stem for p in paths]
    depth = max((len(p.parent.parts) for p in paths), default=0)
    for widening in range(1, depth + 3):
        counts = Counter(names)
        for i, p in enumerate(paths):
            if counts[names[i]] == 1:
                continue
            if widening <= depth:
                names[i] = _label(p, widening, p.stem)
            else:
                names[i] = _label(p, depth, p.name) if widening == depth + 1 else f"{names[i]}-{i}"
    return [n + suffix for n in names]


def _label(path: Path, depth: int, last: str) -> str:
    folders = [f for f in path.parent.parts[len(path.parent.parts) - depth :] if f not in ("/", "\\", "", ".")]
    return "_".join([*folders, last])


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically; a failure (a full disk) is one OutputError line and leaves no temp file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def strict_json(payload: Any) -> bytes:
    """JSON that every reader parses: NaN and ±inf written as null (a service response, a results-file row)."""
    return json.dumps(_finite(payload), allow_nan=False).encode()


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
