"""Reading images from disk safely: every bad file gets one clear error, and nothing is half-read.

Accepted: 8-bit RGB PNG/JPEG/WebP (what generators' outputs are saved as). Rejected with the reason: unreadable,
truncated, zero-size, too many pixels (decompression bombs), 16-bit, palette, RGBA, greyscale.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_PIXELS = 40_000_000  # refuse before decoding: a 100-megapixel upload is an attack or a mistake
ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}


class ImageError(ValueError):
    """A file that cannot be attributed; the message names the file and the reason."""


def _reject(path: Path, reason: str) -> ImageError:
    return ImageError(f"{path}: {reason}")


def load_rgb8(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """H×W×3 uint8 RGB pixels of an 8-bit RGB PNG/JPEG/WebP file, or ImageError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _reject(path, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_rgb8(data, str(path), max_pixels)


def decode_rgb8(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Like load_rgb8, for encoded bytes (HTTP uploads); ``name`` labels the error messages."""
    path = Path(name)
    if len(data) == 0:
        raise _reject(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise _reject(
                    path,
                    f"{w}×{h} = {w * h / 1e6:.0f} megapixels exceeds the limit of {max_pixels / 1e6:.0f}",
                )
            if im.format not in ACCEPTED_FORMATS:
                raise _reject(path, f"unsupported format {im.format} (PNG, JPEG or WebP)")
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F") or im.info.get("bitdepth", 8) > 8:
                raise _reject(path, f"16-bit or float image (mode {mode}); expected 8-bit RGB")
            if mode == "P":
                raise _reject(path, "palette image (mode P); convert it to 8-bit RGB first")
            if mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                raise _reject(path, f"image has an alpha channel (mode {mode}); expected RGB without alpha")
            if mode in ("L", "1"):
                raise _reject(path, f"greyscale image (mode {mode}); the model makes RGB images")
            if mode != "RGB":
                raise _reject(path, f"unsupported pixel mode {mode}; expected 8-bit RGB")
            im.load()
            pixels = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _reject(path, f"too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise _reject(path, "not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _reject(path, f"corrupt or truncated image ({exc})") from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise _reject(path, f"decoded to shape {pixels.shape}; expected H×W×3")
    return pixels


def expand_inputs(specs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files, sorted) and globs → image paths, plus errors for specs that match nothing."""
    paths: list[Path] = []
    errors: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            paths.append(p)

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{spec}: folder holds no .png/.jpg/.jpeg/.webp files")
            for q in found:
                add(q)
        elif p.exists():
            add(p)
        elif glob.has_magic(spec):
            found = sorted(Path(q) for q in glob.glob(os.path.expanduser(spec), recursive=True) if Path(q).is_file())
            if not found:
                errors.append(f"{spec}: pattern matches no files")
            for q in found:
                add(q)
        else:
            errors.append(f"{spec}: no such file or folder")
    return paths, errors


def save_png(image_chw: np.ndarray, path: str | Path) -> None:
    """C×H×W float in [0, 1] → 8-bit PNG."""
    arr = np.clip(np.round(np.asarray(image_chw) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(arr.squeeze(-1) if arr.shape[2] == 1 else arr).save(path)
