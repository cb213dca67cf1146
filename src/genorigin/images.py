"""Reading images for attribution: one entry point for the CLI, the Python API and the HTTP service.

``read_images(specs, generator)`` takes files, folders and patterns (genorigin.inputs), ``decode_upload(data,
name, generator)`` a request body. Both check and decode each image (genorigin.decode: what is accepted and
refused, and why), bring it to the model's input with ``Generator.prepare_image``, and say what was read and
done in an ``ImageFacts``. A bad input costs one one-line error naming it, never the run.

Memory is bounded twice: an image may have at most ``pixel_limit(model size)`` pixels (checked from the header),
and at most ``DECODE_GATE.limit`` images are decoded at once in the process (``set_max_concurrent_decodes``;
``$GENORIGIN_MAX_DECODES``; default min(4, CPUs)), however many threads call in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
from PIL import Image

from genorigin.decode import (
    MAX_PIXELS,
    Background,
    ImageError,
    ImageTooLarge,
    UnreadableImage,
    UnsupportedImage,
    check_convert,
    decode_image,
    pixel_limit,
)
from genorigin.facts import ImageFacts
from genorigin.files import atomic_write_bytes
from genorigin.inputs import IMAGE_SUFFIXES, InputScan, expand_inputs, scan_inputs

__all__ = [
    "DECODE_GATE",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "DecodeGate",
    "HashedRead",
    "ImageError",
    "ImageFacts",
    "ImageTooLarge",
    "InputScan",
    "ReadResult",
    "UnreadableImage",
    "UnsupportedImage",
    "decode_rgb8",
    "decode_upload",
    "encode_png",
    "expand_inputs",
    "load_rgb8",
    "pixel_limit",
    "prepare_pixels",
    "read_image",
    "read_image_hashed",
    "read_images",
    "save_png",
    "scan_inputs",
    "set_max_concurrent_decodes",
]


class DecodeGate:
    """At most ``limit`` decodes at once in this process, so a service decoding uploads in many threads holds
    at most ``limit`` decoded images (each up to the pixel limit) however many requests arrive."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self.limit = self._check(limit)
        self.in_flight = 0
        self.peak = 0  # most decodes seen at once since the last reset_peak(): for tests and monitoring

    @staticmethod
    def _check(limit: int) -> int:
        if int(limit) < 1:
            raise ValueError(f"the number of concurrent decodes must be ≥ 1, got {limit}")
        return int(limit)

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self.limit = self._check(limit)
            self._cond.notify_all()

    def reset_peak(self) -> None:
        with self._cond:
            self.peak = self.in_flight

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a free slot, hold it for the body."""
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify()


DECODE_GATE = DecodeGate(int(os.environ.get("GENORIGIN_MAX_DECODES") or min(4, os.cpu_count() or 1)))


class Preparer(Protocol):
    """What reading needs of a model: its channels and size, its own ``prepare_image`` and what that did
    (``prepared_facts``). A ``Generator`` brings images to its size; the platform mode keeps their own."""

    channels: int
    image_size: tuple[int, int]

    def prepare_image(self, image: np.ndarray) -> np.ndarray: ...

    def prepared_facts(self, facts: ImageFacts) -> ImageFacts: ...


@dataclass
class ReadResult:
    """Images ready for ``Attributor.attribute(images, sources)``, their facts, and what could not be read."""

    sources: list[str]
    images: np.ndarray | list[np.ndarray]  # N×C×H×W float32 in [0, 1]; a list of C×H×W if sizes differ
    facts: list[ImageFacts]  # one per source
    errors: list[str]  # one line per input that gave no image, naming it: the CLI's exit 1
    skipped: list[str]  # notes on what the expansion passed over (links, loops, folders named *.png …)


def read_images(
    specs: Iterable[str],
    generator: Preparer,
    *,
    convert: Background | None = None,
    max_pixels: int | None = None,
    max_workers: int | None = None,
) -> ReadResult:
    """Expand ``specs``, read every image for ``generator``, in order; decodes run in up to ``max_workers``
    threads (default: the decode gate's limit). ``max_pixels`` overrides ``pixel_limit(generator.image_size)``."""
    _model_mode(generator)
    check_convert(convert)  # both refused before any file is touched
    scan = scan_inputs(specs)
    limit = max_pixels or pixel_limit(generator.image_size)

    def read(path: Path) -> tuple[np.ndarray, ImageFacts] | ImageError:
        try:
            return read_image(path, generator, convert=convert, max_pixels=limit)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers or DECODE_GATE.limit) as pool:
        outcomes = list(pool.map(read, scan.paths))
    return _collect(scan, outcomes, generator)


def decode_upload(
    data: bytes, name: str, generator: Preparer, *, convert: Background | None = None, max_pixels: int | None = None
) -> tuple[np.ndarray, ImageFacts]:
    """An HTTP body → (C×H×W float32 model input, facts), or an ImageError whose ``http_status`` to answer."""
    limit = max_pixels or pixel_limit(generator.image_size)
    return _decode_prepared(io.BytesIO(data), name, generator, convert, limit)


def prepare_pixels(
    pixels: np.ndarray, name: str, generator: Preparer, *, max_pixels: int | None = None
) -> tuple[np.ndarray, ImageFacts]:
    """Decoded H×W×3 uint8 pixels (the Open Inference Protocol's ``UINT8`` input) → (model input, facts), on the
    path of a decoded file: the pixel limit, the decode gate, ``prepare_image``. Facts: format ``RAW``."""
    limit = max_pixels or pixel_limit(generator.image_size)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise UnsupportedImage(name, f"pixels must be H×W×3 uint8 (RGB), got {pixels.dtype} {list(pixels.shape)}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height * width > limit:
        raise ImageTooLarge(name, f"{width}×{height} pixels, over the limit of {limit} for this model")
    if _model_mode(generator) != "RGB":
        raise UnsupportedImage(name, "RGB pixels sent to a greyscale model: send the encoded image instead")
    facts = ImageFacts(source=name, format="RAW", width=width, height=height, mode="RGB", bit_depth=8,
                       decoded_size=(width, height))  # fmt: skip
    with DECODE_GATE.slot():
        try:
            return generator.prepare_image(pixels), facts.prepared(generator.image_size)
        except ValueError as exc:
            raise ImageError(name, str(exc)) from exc


def set_max_concurrent_decodes(n: int) -> None:
    """How many images this process decodes at once (each holds up to the pixel limit in memory)."""
    DECODE_GATE.set_limit(n)


def load_rgb8(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """H×W×3 uint8 pixels of an 8-bit RGB PNG/JPEG/WebP file as stored (no conversion, no resize), or ImageError."""
    with _open_file(Path(path)) as f, DECODE_GATE.slot():
        return decode_image(f, str(path), max_pixels=max_pixels)[0]


def decode_rgb8(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Like load_rgb8, for encoded bytes; ``name`` labels the error messages."""
    with DECODE_GATE.slot():
        return decode_image(io.BytesIO(data), name, max_pixels=max_pixels)[0]


def encode_png(image_chw: np.ndarray) -> bytes:
    """C×H×W float in [0, 1] → the bytes of an 8-bit PNG."""
    arr = np.clip(np.round(np.asarray(image_chw) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image_chw: np.ndarray, path: str | Path) -> None:
    """C×H×W float in [0, 1] → 8-bit PNG file, written atomically."""
    atomic_write_bytes(path, encode_png(image_chw))


def read_image(
    path: str | Path, generator: Preparer, *, convert: Background | None = None, max_pixels: int | None = None
) -> tuple[np.ndarray, ImageFacts]:
    """One file, by its exact name (no pattern expansion) → (C×H×W float32 model input, facts), or ImageError."""
    limit = max_pixels or pixel_limit(generator.image_size)
    check_convert(convert)
    with _open_file(Path(path)) as f:
        return _decode_prepared(f, str(path), generator, convert, limit)


@dataclass
class HashedRead:
    """One file read once: the SHA-256 of its bytes (None: they could not be read), then the model input and
    its facts, or the error that refused it."""

    sha256: str | None
    image: np.ndarray | None = None
    facts: ImageFacts | None = None
    error: ImageError | None = None


def read_image_hashed(
    path: str | Path, generator: Preparer, *, name: str | None = None, convert: Background | None = None,
    max_pixels: int | None = None,
) -> HashedRead:  # fmt: skip
    """``read_image`` plus the SHA-256 of the file's bytes, from one open file, never raising ImageError.

    A batch job keys its results by content and path, so a re-run skips what is done; an image refused for its
    content keeps its hash, so a re-run does not retry it. ``name``: how errors and facts name the file (the
    path as the user wrote it), default ``path``.
    """
    name = str(path) if name is None else name
    limit = max_pixels or pixel_limit(generator.image_size)
    check_convert(convert)
    try:
        f = _open_file(Path(path))
    except ImageError as exc:
        return HashedRead(None, error=type(exc)(name, exc.reason))
    with f:
        digest = hashlib.sha256()
        try:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            f.seek(0)
        except OSError as exc:
            return HashedRead(None, error=UnreadableImage(name, f"cannot read file ({exc.strerror or exc})"))
        try:
            image, facts = _decode_prepared(f, name, generator, convert, limit)
        except ImageError as exc:
            return HashedRead(digest.hexdigest(), error=exc)
    return HashedRead(digest.hexdigest(), image, facts)


def _decode_prepared(
    fp: BinaryIO, source: str, generator: Preparer, convert: Background | None, max_pixels: int
) -> tuple[np.ndarray, ImageFacts]:
    """Decode and prepare inside one gate slot: the full-size pixels never outlive it."""
    mode = _model_mode(generator)
    with DECODE_GATE.slot():
        pixels, facts = decode_image(fp, source, mode=mode, convert=convert, max_pixels=max_pixels,
                                     target_size=generator.image_size)  # fmt: skip
        try:
            return generator.prepare_image(pixels), generator.prepared_facts(facts)
        except ValueError as exc:
            raise ImageError(source, str(exc)) from exc


def _model_mode(generator: Preparer) -> str:
    if generator.channels not in (1, 3):
        raise ValueError(f"images are read for 1- or 3-channel models, not {generator.channels} channels")
    return "RGB" if generator.channels == 3 else "L"


def _open_file(path: Path) -> BinaryIO:
    """The file, opened for reading only if it is a regular file: a pipe or device named x.png never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise UnreadableImage(str(path), f"cannot read file ({exc.strerror or exc})") from exc
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise UnreadableImage(str(path), "not a regular file (a folder, device, pipe or socket)")
    return f


def _collect(
    scan: InputScan, outcomes: list[tuple[np.ndarray, ImageFacts] | ImageError], generator: Preparer
) -> ReadResult:
    result = ReadResult([], np.zeros((0, generator.channels, *generator.image_size), np.float32), [],
                        list(scan.errors), list(scan.skipped))  # fmt: skip
    arrays = []
    for path, outcome in zip(scan.paths, outcomes):
        if isinstance(outcome, ImageError):
            result.errors.append(str(outcome))
            continue
        arrays.append(outcome[0])
        result.facts.append(outcome[1])
        result.sources.append(str(path))
    if arrays and len({a.shape for a in arrays}) == 1:
        result.images = np.stack(arrays).astype(np.float32, copy=False)
    elif arrays:  # the platform mode keeps each image's own size
        result.images = [a.astype(np.float32, copy=False) for a in arrays]
    return result
