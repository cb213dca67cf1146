"""What platforms do to images before anyone asks where they came from: JPEG and WebP re-encoding, resizing,
cropping, sensor-like noise (issue 13).

Each ``Transform`` maps C×H×W float images in [0, 1] (the attribution input) to what a re-encoded 8-bit file
would read back: the codecs are Pillow's (libjpeg, libwebp), so the pixels are the ones a real upload would
carry, and every output is 8-bit quantised. The issue-13 geometry changes (``rescale``, ``crop``) come back at
the model's size, resized the way ``Generator.prepare_image`` resizes (LANCZOS); the platform ones of issue 25
(``cut``: a crop kept at its own size, ``resize``: kept at the new size) stay at the size a platform serves,
resampled with Pillow's BICUBIC (``Image.resize``'s default). ``Chain`` applies several in turn (a crop, then
JPEG).

Deterministic from the seed: image i of a call gets the generator ``default_rng((seed, i))``; only noise and
the robust calibration's draws (``TransformFamily``) consume it, codecs and resizes are deterministic anyway.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

KINDS = ("identity", "jpeg", "webp", "rescale", "crop", "noise", "cut", "resize")
ANCHORS = ("centre", "random")
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "lanczos": Image.Resampling.LANCZOS}  # fmt: skip


@dataclass(frozen=True)
class Transform:
    """One named, parameterised change: ``value`` is the quality (jpeg, webp), the scale (rescale: down by
    it, then back up; resize: to it, kept), the kept side fraction (crop: centre crop, resized back; cut: kept
    at its own size, ``height`` its height fraction if it differs, placed by ``anchor``) or σ in 8-bit steps
    (noise)."""

    name: str
    kind: str
    value: float = 0.0
    height: float | None = None  # cut: the kept height fraction (None: ``value``, a square cut)
    anchor: str = "centre"  # cut: "centre", or "random" (uniform over the frame, from the image's generator)
    filter: str = "bicubic"  # resize: Pillow's filter (a platform may use another than the platform mode models)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind in ("jpeg", "webp") and not 1 <= self.value <= 100:
            raise ValueError(f"{self.name}: quality must be in 1..100, got {self.value}")
        if self.kind in ("rescale", "crop", "cut") and not 0 < self.value <= 1:
            raise ValueError(f"{self.name}: scale must be in (0, 1], got {self.value}")
        if self.height is not None and not 0 < self.height <= 1:
            raise ValueError(f"{self.name}: height fraction must be in (0, 1], got {self.height}")
        if self.kind == "resize" and not self.value > 0:
            raise ValueError(f"{self.name}: scale must be > 0, got {self.value}")
        if self.filter not in RESAMPLING:
            raise ValueError(f"{self.name}: filter must be one of {', '.join(RESAMPLING)}, got {self.filter!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"{self.name}: anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        if self.kind == "noise" and self.value < 0:
            raise ValueError(f"{self.name}: σ must be ≥ 0, got {self.value}")

    @property
    def keeps_size(self) -> bool:
        """The output has the input's size (every issue-13 kind; not ``cut`` or ``resize``)."""
        return self.kind not in ("cut", "resize")

    def window(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the frame a ``cut`` keeps (the whole frame for other kinds): where the
        platform mode should find the image. A random cut draws from ``rng`` (as ``apply_one`` does)."""
        h, w = size
        if self.kind != "cut":
            return 0, 0, h, w
        ch, cw = max(1, round(h * (self.height or self.value))), max(1, round(w * self.value))
        if self.anchor == "random":
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    @property
    def draws(self) -> bool:
        """The output depends on the image's random generator (noise, a randomly placed cut)."""
        return self.kind == "noise" or self.anchor == "random"

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
        elif self.kind == "cut":
            top, left, ch, cw = self.window(pixels.shape[:2], rng)
            pixels = pixels[top : top + ch, left : left + cw]
        elif self.kind == "resize":
            h, w = pixels.shape[:2]
            size = (max(1, round(w * self.value)), max(1, round(h * self.value)))
            pixels = _resize(pixels, size, RESAMPLING[self.filter])
        return (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


@dataclass(frozen=True)
class Chain:
    """Transforms applied in turn, as a platform does (crop or resize, then re-encode), under one name."""

    name: str
    parts: tuple[Transform, ...]

    @property
    def keeps_size(self) -> bool:
        return all(t.keeps_size for t in self.parts)

    @property
    def draws(self) -> bool:
        return any(t.draws for t in self.parts)

    def apply_one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.parts:
            image = t.apply_one(image, rng)
        return image

    def window(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        return self.parts[0].window(size, rng)


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


def apply_transform(transform: Transform | Chain | str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """``transform`` (or its registry name) on N×C×H×W images; image i draws from ``default_rng((seed, i))``.

    Every image gets the same output size (N×C×H'×W') unless a randomly drawn size is involved (none in the
    registry).
    """
    t = TRANSFORMS[transform] if isinstance(transform, str) else transform
    return np.stack([t.apply_one(img, np.random.default_rng((seed, i))) for i, img in enumerate(images)])


# Issue 13's list, in its order ("none" is the unmodified PNG); then issue 25's platform geometry, each also
# followed by JPEG q80: centre cuts of 90 % and 80 %, an 80 % cut anywhere in the frame, a 4:3 cut (full
# width, 75 % height), downscales ×0.75 and ×0.5 kept small, an upscale ×2.
_GEOMETRY = (
    Transform("cut0.9", "cut", 0.9),
    Transform("cut0.8", "cut", 0.8),
    Transform("cut0.8-offset", "cut", 0.8, anchor="random"),
    Transform("cut4:3", "cut", 1.0, height=0.75),
    Transform("down0.75", "resize", 0.75),
    Transform("down0.5", "resize", 0.5),
    Transform("up2", "resize", 2.0),
)
TRANSFORMS: dict[str, Transform | Chain] = {
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
        *_GEOMETRY,
        *(Chain(f"{g.name}+jpeg80", (g, Transform("jpeg80", "jpeg", 80))) for g in _GEOMETRY),
        # another filter than the platform mode's (Pillow BICUBIC): how much a wrong guess of it costs
        Transform("down0.5-lanczos", "resize", 0.5, filter="lanczos"),
        Transform("up2-bilinear", "resize", 2.0, filter="bilinear"),
    )
}
GEOMETRY_TRANSFORMS = tuple(name for name, t in TRANSFORMS.items() if not t.keeps_size)


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


@dataclass(frozen=True)
class PlatformDraw:
    """One platform's treatment of one image: the window it kept (top, left, height, width; model pixels,
    sub-pixel), the size it served that window at (H, W: Pillow BICUBIC, antialiased), then JPEG or not."""

    window: tuple[float, float, float, float]
    out_size: tuple[int, int]
    quality: int | None

    @property
    def name(self) -> str:
        top, left, height, width = self.window
        jpeg = f"+jpeg{self.quality}" if self.quality is not None else ""
        return f"box({left:.2f},{top:.2f},{width:.2f}x{height:.2f})→{self.out_size[1]}x{self.out_size[0]}{jpeg}"

    def apply_one(self, image: np.ndarray) -> np.ndarray:
        """C×H×W in [0, 1] → the served image, C×H'×W' 8-bit (Pillow's resize with ``box``, then its JPEG)."""
        pixels = to_uint8(image)
        top, left, height, width = self.window
        box = (left, top, left + width, top + height)
        served = _pil(pixels).resize((self.out_size[1], self.out_size[0]), Image.Resampling.BICUBIC, box=box)
        pixels = _back(served, pixels.shape[2])
        if self.quality is not None:
            pixels = _codec(pixels, "JPEG", quality=self.quality)
        return (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


@dataclass(frozen=True)
class PlatformFamily:
    """What the platform mode's calibration (and its encoder's training) passes own samples through: with
    probability ``identity_share`` the whole frame at the model's size, otherwise a window keeping a fraction
    of each side drawn from ``keep`` (the same for both sides unless an aspect change is drawn, probability
    ``aspect_share``), anywhere in the frame, served at a scale drawn log-uniformly from ``scales`` (probability
    ``rescale_share``, else at its own pixel size), sides within ``sides`` × the model's; then, as the JPEG
    family does, JPEG at a quality from ``jpeg_qualities`` except with probability ``keep_png``.

    Its name is recorded in the inversion settings: change the numbers only under a new name."""

    name: str
    identity_share: float = 0.2
    keep: tuple[float, float] = (0.75, 1.0)
    aspect_share: float = 0.3
    rescale_share: float = 0.6
    scales: tuple[float, float] = (0.5, 2.0)
    sides: tuple[float, float] = (0.25, 2.0)
    keep_png: float = 0.25
    jpeg_qualities: tuple[int, int] = (50, 95)
    min_side: int = 4  # pixels: never served smaller (the platform mode refuses smaller inputs)

    def draw(self, rng: np.random.Generator, frame: tuple[int, int]) -> PlatformDraw:
        fh, fw = frame
        quality = None if rng.random() < self.keep_png else int(rng.integers(self.jpeg_qualities[0],
                                                                              self.jpeg_qualities[1] + 1))  # fmt: skip
        if rng.random() < self.identity_share:
            return PlatformDraw((0.0, 0.0, float(fh), float(fw)), (fh, fw), quality)
        keep_h = float(rng.uniform(*self.keep))
        keep_w = float(rng.uniform(*self.keep)) if rng.random() < self.aspect_share else keep_h
        height, width = keep_h * fh, keep_w * fw
        top, left = float(rng.uniform(0.0, fh - height)), float(rng.uniform(0.0, fw - width))
        scale = 1.0
        if rng.random() < self.rescale_share:
            scale = float(np.exp(rng.uniform(np.log(self.scales[0]), np.log(self.scales[1]))))
        lo, hi = self.sides
        side = lambda n, f: int(np.clip(round(n * scale), max(self.min_side, round(lo * f)), round(hi * f)))  # noqa: E731
        return PlatformDraw((top, left, height, width), (side(height, fh), side(width, fw)), quality)

    def apply(self, images: np.ndarray, seed: int) -> tuple[list[np.ndarray], list[str]]:
        """Each image through its own draw (from ``default_rng((seed, i))``): served images (sizes differ) and
        the draws' names."""
        draws = self.draws(images, seed)
        return [d.apply_one(img) for d, img in zip(draws, images)], [d.name for d in draws]

    def draws(self, images: np.ndarray, seed: int) -> list[PlatformDraw]:
        frame = (int(images.shape[2]), int(images.shape[3]))
        return [self.draw(np.random.default_rng((seed, i)), frame) for i in range(len(images))]

    def references(self, images: np.ndarray, seed: int) -> list[np.ndarray]:
        """Each image through its draw's geometry only (no JPEG): what its served version compresses."""
        return [replace(d, quality=None).apply_one(img) for d, img in zip(self.draws(images, seed), images)]


# settings.robust → the family a calibration draws from ("none": own samples as the model wrote them).
ROBUST_FAMILIES: dict[str, TransformFamily | PlatformFamily | None] = {
    "none": None,
    "jpeg": TransformFamily("jpeg", identity_share=0.25, jpeg_qualities=(50, 95)),
    "platform": PlatformFamily("platform"),
}


def transform_names(names: Sequence[str]) -> list[Transform | Chain]:
    """Registry transforms by name, with the registry's names listed when one is unknown."""
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {', '.join(unknown)}; choose from {', '.join(TRANSFORMS)}")
    return [TRANSFORMS[n] for n in names]
