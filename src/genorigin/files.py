"""Files genorigin reads and writes: one hash function, one cache-folder resolver, one atomic writer.

Every part of genorigin (calibrations, packages, engines, compiled kernels, encoders) goes through these, so
``$GENORIGIN_CACHE`` moves every cache at once and no output is ever left half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (graphs and weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir(kind: str | None = None) -> Path:
    """genorigin's user cache (or its ``kind`` subfolder: calibrations, packages, engines, kernels, encoders).

    ``$GENORIGIN_CACHE`` if set, else ``$XDG_CACHE_HOME/genorigin``, else ``~/.cache/genorigin``.
    """
    explicit = os.environ.get("GENORIGIN_CACHE")
    if explicit:
        base = Path(explicit)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genorigin"
    return base / kind if kind else base


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temp file in the same folder, fsync, rename: readers see the old file or the new one.

    On any failure (a full disk included) the temp file is removed and the old file, if any, is untouched.
    The new file gets the user's umask like any other output (mkstemp alone would make it 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        chmod_as_created(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def chmod_as_created(path: str | Path, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it: 0o666/0o777 minus the umask.

    ``mkstemp``/``mkdtemp`` (used to stage outputs atomically) create 0600/0700, which would silently hide a
    package or calibration from the other users the umask grants access to.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
