"""Writers of the bad image files every input path must reject with a clear, one-line error."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def huge_png(path: Path, width: int = 10_000, height: int = 10_000) -> None:
    """A tiny file whose header claims 100 megapixels (a decompression bomb): must be refused unread."""
    _rgb(8).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def write_bad_images(folder: Path) -> dict[str, str]:
    """file name → a word the error message must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    _rgb().save(folder / "full.png")
    (folder / "truncated.png").write_bytes((folder / "full.png").read_bytes()[:200])
    (folder / "full.png").unlink()
    huge_png(folder / "huge.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(folder / "sixteen.png")
    _rgb().convert("P").save(folder / "palette.png")
    _rgb().convert("RGBA").save(folder / "rgba.png")
    _rgb().convert("L").save(folder / "grey.png")
    return {
        "zero.png": "empty",
        "garbage.png": "not a readable image",
        "truncated.png": "truncated",
        "huge.png": "megapixels",
        "sixteen.png": "16-bit",
        "palette.png": "palette",
        "rgba.png": "alpha",
        "grey.png": "greyscale",
    }
