"""What platforms do to images before anyone asks where they came from: JPEG and WebP re-encoding, resizing,
cropping, sensor-like noise (issue 13).

Each ``Transform`` maps C×H×W float images in [0, 1] (the attribution input) to the same shape, as a
re-encoded 8-bit file would be read back: the codecs are Pillow's (libjpeg, libwebp), so the pixels are the
ones a real upload would carry, and every output is 8-bit quantised. Geometry changes come back at the
model's size, resized the way ``Generator.prepare_image`` resizes (LANCZOS).

Deterministic from the seed: image i of a call gets the generator ``default_rng((seed, i))``; only noise and
the robust calibration's draws (``TransformFamily``) consume it, codecs and resizes are deterministic anyway.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

KINDS = ("identity", "jpeg", "webp", "rescale", "crop", "noise")


@dataclass(frozen=True)
class Transform:
    """One named, parameterised change: ``value`` is the quality (jpeg, webp), the scale (rescale: down by
    it, then back up), the kept side fraction (crop: centre crop, resized back) or σ in 8-bit steps (noise)."""

    name: str
    kind: str
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind in ("jpeg", "webp") and not 1 <= self.value <= 100:
            raise ValueError(f"{self.name}: quality must be in 1..100, got {self.value}")
        if self.kind in ("rescale", "crop") and not 0 < self.value <= 1:
            raise ValueError(f"{self.name}: scale must be in (0, 1], got {self.value}")
        if self.kind == "noise" and self.value < 0:
            raise ValueError(f"{self.name}: σ must be ≥ 0, got {self.value}")

    def apply_one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One C×H×W float image in [0, 1] → the transformed, 8-bit quantised image of the same shape."""
        pixels = to_uint8(image)
        if self.kind == "jpeg":
            pixels = _codec(pixels, "JPEG", quality=int(self.value))
        elif self.kind == "webp":
            pixels = _codec(pixels, "WEBP", quality=int(self.value))
        elif self.kind == "rescale":
            h, w = pixels.shape[:2]
            small = (max(1, round(w * self.value)), max(1, round(h * self.value)))
            pixels = _resize(_resize(pixels, small, Image.Resampling.BICUBIC), (w, h), Image.Resampling.LANCZOS)
        elif self.kind == "crop":
            h, w = pixels.shape[:2]
            ch, cw = max(1, round(h * self.value)), max(1, round(w * self.value))
            top, left = (h - ch) // 2, (w - cw) // 2
            pixels = _resize(pixels[top : top + ch, left : left + cw], (w, h), Image.Resampling.LANCZOS)
        elif self.kind == "noise":
            noisy = pixels.astype(np.float64) + rng.normal(0.0, self.value, pixels.shape)
            pixels = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        return (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """C×H×W float in [0, 1] → H×W×C uint8 (rounded, as a PNG writer does)."""
    return np.clip(np.round(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _back(pil: Image.Image, channels: int) -> np.ndarray:
    arr = np.asarray(pil)
    return arr[:, :, None] if arr.ndim == 2 else arr[:, :, :channels]


def _codec(pixels: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    """Encode and decode once with Pillow's defaults otherwise (JPEG: 4:2:0 chroma for RGB; WebP: lossy)."""
    buf = io.BytesIO()
    _pil(pixels).save(buf, format=fmt, quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return _back(im.convert("L" if pixels.shape[2] == 1 else "RGB"), pixels.shape[2])


def _resize(pixels: np.ndarray, size: tuple[int, int], method: Image.Resampling) -> np.ndarray:
    return _back(_pil(pixels).resize(size, method), pixels.shape[2])


def apply_transform(transform: Transform | str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """``transform`` (or its registry name) on N×C×H×W images; image i draws from ``default_rng((seed, i))``."""
    t = TRANSFORMS[transform] if isinstance(transform, str) else transform
    return np.stack([t.apply_one(img, np.random.default_rng((seed, i))) for i, img in enumerate(images)])


# The list, in its order; "none" is the unmodified PNG.
TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("none", "identity"),
        *(Transform(f"jpeg{q}", "jpeg", q) for q in (95, 90, 80, 70, 50)),
        Transform("rescale0.75", "rescale", 0.75),
        Transform("rescale0.5", "rescale", 0.5),
        Transform("crop0.9", "crop", 0.9),
        Transform("noise1", "noise", 1.0),
        Transform("noise3", "noise", 3.0),
        Transform("webp80", "webp", 80),
    )
}


@dataclass(frozen=True)
class TransformFamily:
    """What a robust calibration passes its own samples through: each sample, independently, stays as it is
    with probability ``identity_share`` and is otherwise JPEG-compressed at a quality drawn uniformly from
    ``jpeg_qualities`` (inclusive). Its name is recorded in the inversion settings; change the numbers only
    under a new name, or old calibrations would silently mean something else."""

    name: str
    identity_share: float
    jpeg_qualities: tuple[int, int]

    def draw(self, rng: np.random.Generator) -> Transform:
        if rng.random() < self.identity_share:
            return TRANSFORMS["none"]
        q = int(rng.integers(self.jpeg_qualities[0], self.jpeg_qualities[1] + 1))
        return Transform(f"jpeg{q}", "jpeg", q)

    def apply(self, images: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
        """Each image through its own draw (from ``default_rng((seed, i))``); the images and the draws' names."""
        out, names = [], []
        for i, img in enumerate(images):
            rng = np.random.default_rng((seed, i))
            t = self.draw(rng)
            out.append(t.apply_one(img, rng))
            names.append(t.name)
        return np.stack(out), names


# settings.robust → the family a calibration draws from ("none": own samples as the model wrote them).
ROBUST_FAMILIES: dict[str, TransformFamily | None] = {
    "none": None,
    "jpeg": TransformFamily("jpeg", identity_share=0.25, jpeg_qualities=(50, 95)),
}


def transform_names(names: Sequence[str]) -> list[Transform]:
    """Registry transforms by name, with the registry's names listed when one is unknown."""
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {', '.join(unknown)}; choose from {', '.join(TRANSFORMS)}")
    return [TRANSFORMS[n] for n in names]
