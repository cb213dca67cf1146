"""One encoded image → checked 8-bit pixels and the facts of what was read, or one error of a known kind.

Accepted as stored: 8-bit PNG, JPEG and WebP stills in the model's mode (RGB; L for one-channel models), what
generators' outputs are saved as. The format is taken from the bytes, never from the file name, and only
Pillow's PNG, JPEG and WebP decoders ever see the bytes.

Refused, each with one line naming the input; the kind gives the HTTP status a service answers:

* unreadable (400): empty, not an image (text, HTML), corrupt or truncated, zero width or height;
* too large (413): more pixels than the limit, read from the header: nothing is decoded;
* unsupported (415): other formats (GIF, BMP, TIFF, HEIC, AVIF …); 16 bits per channel (also 16-bit RGB PNGs,
  which Pillow would silently cut to 8 bits) or float pixels; CMYK (converting it needs colour management);
  animated PNG/WebP (a generator makes stills: the error says how many frames, extract the one to check
  rather than have the first one picked silently); and, unless ``convert`` is given, greyscale, palette
  and alpha images.

``convert="white"`` or ``"black"`` reads greyscale, palette and alpha images too, converted to the model's mode
with alpha composited on that background; ``ImageFacts.conversion`` says what was done.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from genorigin.facts import ImageFacts
from genorigin.jpeg import estimate_quality

Background = Literal["white", "black"]
BACKGROUNDS: dict[str, tuple[int, int, int, int]] = {"white": (255, 255, 255, 255), "black": (0, 0, 0, 255)}

# Pixel limit (docs/inputs.md): 1024 × the model's pixels (32× its side), never below MIN_PIXEL_LIMIT (a 16 MP
# photo reads for any model), never above MAX_PIXELS (a 67 MP RGB image is ~200 MB decoded).
PIXELS_PER_MODEL_PIXEL = 1024
MIN_PIXEL_LIMIT = 16 * 2**20
MAX_PIXELS = 64 * 2**20
DRAFT_MARGIN = 2  # JPEG DCT scaling keeps the short side ≥ 2 × the model's side, for LANCZOS to finish the job

_DECODERS: dict[str, type[ImageFile.ImageFile]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}
_OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                  b"8BPS": "PSD", b"\x00\x00\x01\x00": "ICO", b"\xff\x0a": "JPEG XL", b"qoif": "QOI"}  # fmt: skip
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"jp2 ": "JPEG 2000"}
_PNG_COLOUR = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(ValueError):
    """An input that cannot be attributed: ``str()`` is one line naming the input and the reason."""

    kind = "unreadable"
    http_status = 400

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = one_line(source), one_line(reason)
        super().__init__(f"{self.source}: {self.reason}")


class UnreadableImage(ImageError):
    """Not an image, or a damaged one."""


class ImageTooLarge(ImageError):
    """More pixels than the limit: refused from the header, before any decoding."""

    kind, http_status = "too-large", 413


class UnsupportedImage(ImageError):
    """A well-formed image of a kind genorigin does not attribute (format, depth, frames, mode)."""

    kind, http_status = "unsupported", 415


def one_line(text: str) -> str:
    """Collapse whitespace and escape control characters: names and reasons come from untrusted inputs."""
    flat = " ".join(str(text).split())
    return flat if flat.isprintable() else ascii(flat)[1:-1]


def pixel_limit(image_size: tuple[int, int]) -> int:
    """Most pixels an input may have for a model of ``image_size`` (H, W): the rule in the module constants."""
    h, w = image_size
    return min(MAX_PIXELS, max(MIN_PIXEL_LIMIT, PIXELS_PER_MODEL_PIXEL * int(h) * int(w)))


def check_convert(convert: object) -> None:
    """Refuse a conversion mode other than None, 'white' or 'black' (a caller's mistake, not an image's)."""
    if convert is not None and convert not in BACKGROUNDS:
        raise ValueError(f"convert must be None, 'white' or 'black', got {convert!r}")


def decode_image(
    fp: BinaryIO,
    source: str,
    *,
    mode: str = "RGB",
    convert: Background | None = None,
    max_pixels: int = MAX_PIXELS,
    target_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, ImageFacts]:
    """H×W×C uint8 pixels in ``mode`` ("RGB" or "L") and their facts, or an ImageError naming ``source``.

    ``target_size`` (H, W), the model's size, lets a large JPEG decode at 1/2, 1/4 or 1/8 scale. Callers hold
    a ``genorigin.images.DECODE_GATE`` slot around this and whatever keeps the full-size pixels.
    """
    check_convert(convert)
    head = fp.read(32)
    fp.seek(0)
    fmt = _sniff(head, source)
    depth, colour = _png_depth(head, source) if fmt == "PNG" else (8, None)
    try:
        with _open(fp, fmt, source) as im:
            stored_size = im.size
            _check_header(im, source, max_pixels, depth, colour)
            if target_size is not None and fmt == "JPEG":
                im.draft(None, _draft_size(stored_size, target_size))
            im.load()
            converted, conversion = _to_mode(im, mode, convert, source)
            pixels = np.asarray(converted, dtype=np.uint8)
            facts = _facts(im, source, stored_size, depth, conversion)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise UnreadableImage(source, f"corrupt or truncated {fmt} ({exc})") from exc
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), facts


def _sniff(head: bytes, source: str) -> str:
    """PNG, JPEG or WEBP from the first bytes; anything else is refused here, before any decoder runs."""
    if not head:
        raise UnreadableImage(source, "empty file (0 bytes)")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    other = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
    if other is None and head[4:8] == b"ftyp":
        other = _FTYP_BRANDS.get(head[8:12])
    if other is not None:
        raise UnsupportedImage(source, f"unsupported format {other} (PNG, JPEG or WebP)")
    if _looks_like_text(head):
        raise UnreadableImage(source, "not an image: the content is text (HTML, an error page, …)")
    raise UnreadableImage(source, "not an image (unknown or corrupt format; PNG, JPEG or WebP expected)")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", errors="replace")  # a multi-byte character cut at the end
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _open(fp: BinaryIO, fmt: str, source: str) -> ImageFile.ImageFile:
    """The format's own decoder reads the header (Image.open would warn about, not refuse, large images)."""
    try:
        return _DECODERS[fmt](fp)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise UnreadableImage(source, f"not a readable {fmt} ({exc})") from exc


def _png_depth(head: bytes, source: str) -> tuple[int, str | None]:
    """Bits per channel and colour type from the PNG header: Pillow hides a 16-bit RGB PNG as 8-bit RGB."""
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise UnreadableImage(source, "not a readable PNG (no IHDR header)")
    w, h, depth, colour = struct.unpack(">IIBB", head[16:26])
    if w == 0 or h == 0:
        raise UnreadableImage(source, f"zero-size image ({w}×{h})")
    return depth, _PNG_COLOUR.get(colour)


def _check_header(im: ImageFile.ImageFile, source: str, max_pixels: int, depth: int, colour: str | None) -> None:
    """Refuse from the header what should not be decoded."""
    w, h = im.size
    if w * h > max_pixels:
        raise ImageTooLarge(source, f"{w}×{h} = {w * h / 1e6:.1f} megapixels exceeds the limit of "
                            f"{max_pixels / 1e6:.1f} megapixels for this model; downscale it first")  # fmt: skip
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise UnsupportedImage(source, f"animated {im.format} with {frames} frames; genorigin attributes one "
                               "still image: save the frame to check as its own file")  # fmt: skip
    if depth > 8 or im.mode in _DEEP_MODES:
        raise UnsupportedImage(source, f"{depth}-bit {colour or im.mode} {im.format} (mode {im.mode}): 16-bit "
                               "or float pixels are not read; save it with 8 bits per channel")  # fmt: skip
    if im.mode == "CMYK":
        raise UnsupportedImage(source, "CMYK image: converting print colours to RGB needs colour management; "
                               "convert it to sRGB with a colour-managed tool")  # fmt: skip


def _draft_size(size: tuple[int, int], target_size: tuple[int, int]) -> tuple[int, int]:
    """The size to ask Image.draft for: DCT scaling by the largest 1/k keeping the short side ≥ DRAFT_MARGIN ×."""
    w, h = size
    need = DRAFT_MARGIN * max(target_size)
    k = next(k for k in (8, 4, 2, 1) if k == 1 or min(w, h) // k >= need)
    return w // k, h // k


def _to_mode(im: Image.Image, mode: str, convert: Background | None, source: str) -> tuple[Image.Image, str | None]:
    """``im`` in ``mode``, converting only when asked; the conversion applied, described, or None."""
    alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    stored = f"{im.mode}+transparency" if alpha and im.mode not in _ALPHA_MODES else im.mode
    if im.mode == mode and not alpha:
        return im, None
    if convert is None:
        raise UnsupportedImage(source, _refusal(stored, mode))
    if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):
        raise UnsupportedImage(source, f"pixel mode {im.mode} cannot be converted to {mode}")
    if not alpha:
        return im.convert(mode), f"{stored}→{mode}"
    background = Image.new("RGBA", im.size, BACKGROUNDS[convert])
    return Image.alpha_composite(background, im.convert("RGBA")).convert(mode), f"{stored}→{mode}, alpha on {convert}"


def _refusal(stored: str, mode: str) -> str:
    want = "RGB" if mode == "RGB" else "greyscale (mode L)"
    hint = f"the model takes {want}: allow conversion with --convert white|black (API: convert='white')"
    if stored in _ALPHA_MODES or "+" in stored:
        return f"image has an alpha channel (mode {stored}); {hint}, alpha composited on that background"
    if stored in ("P", "PA"):
        return f"palette image (mode {stored}); {hint}"
    if stored in ("L", "1"):
        return f"greyscale image (mode {stored}); {hint}"
    return f"{stored} image; {hint}"


def _facts(
    im: ImageFile.ImageFile, source: str, stored_size: tuple[int, int], depth: int, conversion: str | None
) -> ImageFacts:
    quality = estimate_quality(im.quantization[0]) if im.format == "JPEG" and im.quantization else None
    return ImageFacts(
        source=one_line(source),
        format=str(im.format),
        width=stored_size[0],
        height=stored_size[1],
        mode=im.mode,
        bit_depth=depth,
        decoded_size=im.size,
        conversion=conversion,
        jpeg_quality=quality.quality if quality else None,
        jpeg_quality_error=quality.rms_error if quality else None,
    )
