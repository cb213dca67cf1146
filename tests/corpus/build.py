"""The bad-input corpus: every kind of file an upload or a folder may hold, and what genorigin must do with it.

Built at test time (seeded, nothing committed), so the CLI, the Python API and the HTTP service can all be
run over the same cases:

* ``CASES``: one ``CorpusCase`` each; ``write_corpus(folder)`` creates them all in one folder.
* ``outcome`` says what reading that folder (``read_images([folder], …)``, ``genorigin attribute folder``) does:
  ``accepted`` (attributed), ``error`` (a one-line error naming the file, containing ``expect_error``; the run
  goes on and the CLI exits 1, or 2 if nothing was read), ``skipped`` (a note containing ``expect_skip``, the
  exit code unchanged). Reading the file by its own path or uploading its bytes gives ``expect_error``
  (None: accepted); path-only cases (``http_status`` None: links, folders, pipes) are not uploads.
* ``http_status``: what ``POST /v1/attribute`` answers without conversion: 200, 400 unreadable, 413 too
  large, 415 unsupported. With ``convert="white"``/``"black"`` a ``convert_ok`` case is accepted (200).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CorpusCase:
    name: str  # the file name in the corpus folder (its suffix decides whether a folder scan looks at it)
    content: bytes | Callable[[Path], None]  # the file's bytes, or a builder that makes ``path`` (links, folders)
    expect_error: str | None  # substring of the one-line error without conversion; None: no error
    http_status: int | None  # the service's answer without conversion; None: not an upload (path-only case)
    convert_ok: bool  # read without error with convert="white" or "black"
    expect_skip: str | None = None  # substring of the note when a folder scan passes over it

    @property
    def outcome(self) -> Literal["accepted", "error", "skipped"]:
        if self.expect_skip is not None:
            return "skipped"
        return "accepted" if self.expect_error is None else "error"

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        if isinstance(self.content, bytes):
            path.write_bytes(self.content)
        else:
            self.content(path)
        return path


def write_corpus(folder: Path, cases: tuple[CorpusCase, ...] | None = None) -> dict[str, CorpusCase]:
    """Create ``cases`` (default: all) in ``folder``; file name → case."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = CASES if cases is None else cases
    for case in chosen:
        case.write(folder)
    return {c.name: c for c in chosen}


# ------------------------------------------------------------------------------------------------ builders
def _rgb(size: int = 16, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def rgba(size: int = 16) -> Image.Image:
    """Random colours under an alpha ramp from transparent (left) to opaque (right): encoders keep the alpha."""
    im = _rgb(size).convert("RGBA")
    im.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, size).round().astype(np.uint8), (size, 1))))
    return im


def encode(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_bytes(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk: for what Pillow cannot write (16-bit RGB, zero width, a lying header)."""
    return _png_file(width, height, depth, colour_type, zlib.compress(rows))


def uniform_png(width: int, height: int, colour: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    """A real, fully decodable RGB PNG of one colour, compressed row by row: 6000×6000 is ~100 KB on disk and
    108 MB decoded, the cheap-to-send, costly-to-decode upload the pixel limit is for."""
    row = b"\x00" + bytes(colour) * width
    z = zlib.compressobj(9)
    return _png_file(width, height, 8, 2, b"".join(z.compress(row) for _ in range(height)) + z.flush())


def _png_file(width: int, height: int, depth: int, colour_type: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rgb16_png(size: int = 8) -> bytes:
    """16 bits per channel RGB: Pillow opens it as 8-bit mode RGB without a word."""
    values = np.random.default_rng(1).integers(0, 65536, (size, size * 3), dtype=np.uint16).astype(">u2")
    return png_bytes(size, size, 16, 2, b"".join(b"\x00" + row.tobytes() for row in values))


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A 100-megapixel header over a few bytes of data: decoding it would fail as truncated, so the
    'megapixels' error proves it was refused from the header."""
    return png_bytes(width, height, 8, 2, b"\x00" * 64)


def _frames(fmt: str) -> bytes:
    frames = [_rgb(16, seed) for seed in range(3)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.png").write_bytes(encode(_rgb(), "PNG"))


def _case(name: str, content: bytes | Callable[[Path], None], error: str | None, status: int | None,
          convert_ok: bool = False, skip: str | None = None) -> CorpusCase:  # fmt: skip
    return CorpusCase(name, content, error, status, convert_ok or error is None, skip)


_GREY = _rgb().convert("L")
CASES: tuple[CorpusCase, ...] = (
    # read as they are
    _case("rgb.png", encode(_rgb(), "PNG"), None, 200),
    _case("rgb.jpg", encode(_rgb(64), "JPEG", quality=90), None, 200),
    _case("progressive.jpeg", encode(_rgb(64), "JPEG", quality=60, progressive=True), None, 200),
    _case("lossless.webp", encode(_rgb(), "WEBP", lossless=True), None, 200),
    _case("lossy.webp", encode(_rgb(), "WEBP", quality=80), None, 200),
    # unreadable: 400
    _case("empty.png", b"", "empty file", 400),
    _case("text.png", b"this is not an image at all\n" * 10, "the content is text", 400),
    _case("page.png", b"<!DOCTYPE html>\n<html><body><h1>404</h1></body></html>\n", "the content is text", 400),
    _case("noise.jpg", np.random.default_rng(2).integers(0, 256, 600, dtype=np.uint8).tobytes(), "not an image", 400),
    _case("truncated.png", _truncated(encode(_rgb(64), "PNG")), "truncated", 400),
    _case("truncated.jpg", _truncated(encode(_rgb(64), "JPEG")), "truncated", 400),
    _case("truncated.webp", _truncated(encode(_rgb(64), "WEBP")), "not a readable WEBP", 400),
    _case("bad_header.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 2, "not a readable JPEG", 400),
    _case("zero_width.png", png_bytes(0, 16, 8, 2, b""), "zero-size image", 400),
    # too large: 413
    _case("bomb.png", bomb_png(), "megapixels", 413),
    # unsupported: 415, whatever the conversion
    _case("gif_named.png", _frames("GIF"), "unsupported format GIF", 415),
    _case("tiff_named.png", encode(_rgb(), "TIFF"), "unsupported format TIFF", 415),
    _case("rgb16.png", rgb16_png(), "16-bit RGB PNG", 415),
    _case("grey16.png", encode(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"), "16-bit greyscale", 415),
    _case("animated.png", _frames("PNG"), "animated PNG with 3 frames", 415),
    _case("animated.webp", _frames("WEBP"), "animated WEBP with 3 frames", 415),
    _case("cmyk.jpg", encode(_rgb().convert("CMYK"), "JPEG"), "CMYK image: converting print colours", 415),
    # unsupported as stored, read with convert="white"/"black": 415 without
    _case("grey.png", encode(_GREY, "PNG"), "greyscale", 415, convert_ok=True),
    _case("grey.jpg", encode(_GREY, "JPEG"), "greyscale", 415, convert_ok=True),
    _case("bilevel.png", encode(_GREY.convert("1"), "PNG"), "greyscale", 415, convert_ok=True),
    _case("grey_alpha.png", encode(rgba().convert("LA"), "PNG"), "alpha", 415, convert_ok=True),
    _case("rgba.png", encode(rgba(), "PNG"), "alpha", 415, convert_ok=True),
    _case("rgba.webp", encode(rgba(), "WEBP", lossless=True), "alpha", 415, convert_ok=True),
    _case("rgb_trns.png", encode(_rgb(), "PNG", transparency=(0, 0, 0)), "alpha", 415, convert_ok=True),
    _case("palette.png", encode(_rgb().convert("P"), "PNG"), "palette", 415, convert_ok=True),
    _case("palette_trns.png", encode(_rgb().convert("P"), "PNG", transparency=0), "alpha", 415, convert_ok=True),
    # path-only: what a folder scan passes over, with a note
    _case("folder.png", _folder, None, None, skip="a folder"),
    _case("broken.png", _symlink("missing.png"), None, None, skip="broken symbolic link"),
    _case("loop.png", _symlink("loop.png"), None, None, skip="symlink loop"),
    _case("pipe.png", os.mkfifo, None, None, skip="not a regular file"),
    _case("zz_alias.png", _symlink("rgb.png"), None, None, skip="same file as"),
    # passed over by a folder scan (suffix), refused by its own path or as an upload (content)
    _case("still.gif", encode(_rgb().convert("P"), "GIF"), "unsupported format GIF", 415, skip=".gif files are not"),
)
