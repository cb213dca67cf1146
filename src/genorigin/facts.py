"""What was read and what was done to it: the facts every image read returns beside its pixels.

Kept apart from decoding so that ``Generator.prepare_image`` and the facts share one crop rule without the
generator importing any decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ImageFacts:
    """What was read and what was done to it on the way to the model's input.

    Geometry: the stored ``width``×``height`` → ``decoded_size`` (JPEG DCT scaling by 1/2, 1/4 or 1/8 when the
    model is much smaller) → ``crop_box`` (centre square, in decoded pixels) → the model's size, ``scale``
    being model size ÷ crop side per axis. ``crop_box`` and ``scale`` are None until ``prepared`` fills them.
    """

    source: str
    format: str  # PNG, JPEG or WEBP, from the bytes
    width: int
    height: int
    mode: str  # Pillow's mode as stored: RGB, L, LA, P, RGBA …
    bit_depth: int  # bits per channel: the PNG header's; 8 for JPEG and WebP
    decoded_size: tuple[int, int]  # (width, height) actually decoded
    conversion: str | None = None  # e.g. "RGBA→RGB, alpha on white"; None: the pixels are as stored
    jpeg_quality: int | None = None  # nearest IJG quality 1..100 (genorigin.jpeg)
    jpeg_quality_error: float | None = None  # RMS table difference at that quality; 0.0: exactly libjpeg's table
    crop_box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom)
    scale: tuple[float, float] | None = None  # (x, y)

    @property
    def is_jpeg(self) -> bool:
        return self.format == "JPEG"

    def prepared(self, image_size: tuple[int, int]) -> ImageFacts:
        """These facts plus the crop and resize ``Generator.prepare_image`` applies for a model of (H, W)."""
        box, scale = prepare_geometry(self.decoded_size, image_size)
        return replace(self, crop_box=box, scale=scale)

    def served(self, size: tuple[int, int]) -> ImageFacts:
        """These facts plus the platform mode's preparation: the whole decoded image kept at (H, W) ``size``
        (its own size unless it was larger than the mode takes)."""
        w, h = self.decoded_size
        return replace(self, crop_box=(0, 0, w, h), scale=(size[1] / w, size[0] / h))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists), with ``is_jpeg``."""
        d = asdict(self) | {"is_jpeg": self.is_jpeg}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def centre_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square ``Generator.prepare_image`` keeps."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def prepare_geometry(
    decoded_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[tuple[int, int, int, int], tuple[float, float]]:
    """Crop box and per-axis scale that take a decoded (W, H) image to the model's (H, W), as prepare_image does."""
    w, h = decoded_size
    target_h, target_w = image_size
    if (h, w) == (target_h, target_w):
        return (0, 0, w, h), (1.0, 1.0)
    box = centre_crop_box(w, h)
    side = box[2] - box[0]
    return box, (target_w / side, target_h / side)
