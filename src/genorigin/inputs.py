"""Files, folders and glob patterns → the image files to read, each once, plus notes on what was passed over.

* A folder gives its own files with an image suffix (not its subfolders), sorted.
* A pattern (``*``, ``?``, ``[…]``, ``**`` for any depth) is matched by a walk of our own: ``**`` follows
  symbolic links to folders, but never into a folder it is already inside (a symlink loop) and never twice
  into the same folder, so no tree makes it loop or blow up. Names starting with ``.`` need a pattern that
  starts with ``.``, as in the shell.
* Every file is read once, under the first spelling met: two paths to one file (links, ``a/../a``) count once.
* What is passed over is said, not silently dropped: broken links, symlink loops, folders or devices named
  like images, image types genorigin does not read (``.gif``, ``.tiff`` …), second spellings of a file.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from genorigin.decode import one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
Walked = dict[tuple[str, tuple[str, ...]], str]  # (real folder, parts still to match) → first spelling
OTHER_IMAGE_SUFFIXES = (".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".psd")


@dataclass
class InputScan:
    """The image files to read, one-line errors for specs that give none, and notes on what was passed over."""

    paths: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _first: dict[str, Path] = field(default_factory=dict, repr=False)

    def add(self, path: Path) -> None:
        """Take ``path`` unless its file was already taken (a second spelling is noted, a repeat is not)."""
        real = os.path.realpath(path)
        first = self._first.setdefault(real, path)
        if first is path:
            self.paths.append(path)
        elif first != path:
            self.skipped.append(f"{_name(path)}: same file as {_name(first)}, read once")

    def note(self, path: str | Path, reason: str) -> None:
        self.skipped.append(f"{_name(path)}: {reason}")


def scan_inputs(specs: Iterable[str]) -> InputScan:
    """Expand files, folders and patterns (see the module docstring); never follows a symlink loop."""
    scan = InputScan()
    for spec in specs:
        _scan_spec(str(spec), scan)
    return scan


def expand_inputs(specs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """``scan_inputs`` without the notes: (image paths, errors for specs that give none)."""
    scan = scan_inputs(specs)
    return scan.paths, scan.errors


def _name(path: str | Path) -> str:
    return one_line(str(path))


def _scan_spec(spec: str, scan: InputScan) -> None:
    path = Path(spec)
    if os.path.lexists(path):
        problem = _not_a_file(path)
        if problem == "a folder":
            _scan_folder(path, scan)
        elif problem is None:
            scan.add(path)
        else:
            scan.errors.append(f"{_name(spec)}: {problem}")
    elif glob.has_magic(spec):
        _scan_pattern(spec, scan)
    else:
        scan.errors.append(f"{_name(spec)}: no such file or folder")


def _scan_folder(folder: Path, scan: InputScan) -> None:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        scan.errors.append(f"{_name(folder)}: cannot list the folder ({exc.strerror or exc})")
        return
    found = 0
    for entry in entries:
        suffix = entry.suffix.lower()
        if suffix not in IMAGE_SUFFIXES + OTHER_IMAGE_SUFFIXES:
            continue
        problem = _not_a_file(entry)
        if problem is not None:
            scan.note(entry, problem)
        elif suffix in OTHER_IMAGE_SUFFIXES:
            scan.note(entry, f"{suffix} files are not read (PNG, JPEG or WebP)")
        else:
            found += 1
            scan.add(entry)
    if found == 0:
        scan.errors.append(f"{_name(folder)}: folder holds no .png/.jpg/.jpeg/.webp files")


def _scan_pattern(pattern: str, scan: InputScan) -> None:
    found = 0
    for match in sorted(set(_walk_pattern(os.path.expanduser(pattern), scan))):
        path = Path(match)
        problem = _not_a_file(path)
        if problem is None:
            found += 1
            scan.add(path)
        elif problem != "a folder" or path.suffix.lower() in IMAGE_SUFFIXES:
            scan.note(path, problem)
    if found == 0:
        scan.errors.append(f"{_name(pattern)}: pattern matches no files")


def _not_a_file(path: Path) -> str | None:
    """None for a regular file (through links); else why it cannot be read as one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return f"broken symbolic link (to {_name(os.readlink(path))})"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "a folder"
    return None if stat.S_ISREG(mode) else "not a regular file (a device, pipe or socket)"


def _walk_pattern(pattern: str, scan: InputScan) -> Iterator[str]:
    """Paths matching ``pattern``, spelled as glob.glob spells them, walking each real folder once."""
    drive, rest = os.path.splitdrive(pattern)
    root = drive + (os.sep if rest.startswith(os.sep) else "")
    parts = tuple(p for p in rest.split(os.sep) if p)
    literal = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    base = os.path.join(root, *parts[:literal]) if literal else root
    start = os.path.realpath(base or os.curdir)
    yield from _match(base, parts[literal:], frozenset({start}), {}, scan)


def _match(base: str, parts: tuple[str, ...], inside: frozenset[str], walked: Walked, scan: InputScan) -> Iterator[str]:
    """Match ``parts`` below ``base``. ``inside``: real folders on the way here (a link to one is a loop);
    ``walked``: (real folder, parts still to match) → the spelling it was first searched under."""
    if not parts:
        if base:
            yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        if rest:
            yield from _match(base, rest, inside, walked, scan)
        elif base:
            yield os.path.join(base, "")  # a trailing ** matches its own folder, spelled with a slash as by glob
        yield from _below(base, rest, inside, walked, scan)
    elif glob.has_magic(head):
        for name in _listdir(base, head):
            if fnmatch(name, head):
                sub = os.path.join(base, name)
                yield from _match(sub, rest, inside | {os.path.realpath(sub)}, walked, scan)
    else:
        sub = os.path.join(base, head)
        if os.path.lexists(sub):
            yield from _match(sub, rest, inside, walked, scan)


def _below(base: str, rest: tuple[str, ...], inside: frozenset[str], walked: Walked, scan: InputScan) -> Iterator[str]:
    """What ``**`` then ``rest`` match strictly below ``base``: every real folder walked once, loops noted."""
    for name in _listdir(base, "**"):
        sub = os.path.join(base, name)
        if not os.path.isdir(sub):
            if not rest:  # a trailing ** matches files too
                yield sub
            continue
        real = os.path.realpath(sub)
        if real in inside:
            scan.note(sub, "symlink loop (a link back to a folder it is in), not followed")
            continue
        first = walked.setdefault((real, rest), sub)
        if first is not sub:
            if first != sub:
                scan.note(sub, f"same folder as {_name(first)}, searched once")
            continue
        if rest:
            yield from _match(sub, rest, inside | {real}, walked, scan)
        else:
            yield sub
        yield from _below(sub, rest, inside | {real}, walked, scan)


def _listdir(base: str, pattern: str) -> list[str]:
    """Sorted entry names, hidden ones only for a pattern starting with '.'; an unreadable folder has none."""
    try:
        names = os.listdir(base or os.curdir)
    except OSError:
        return []
    return sorted(n for n in names if pattern.startswith(".") or not n.startswith("."))
