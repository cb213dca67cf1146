"""Image complexity by 2-D entropy, the calibration of the reconstruction loss.

Pairs (centre grey level i, floor of the mean of its 8 neighbours j) over every pixel of the 8-bit grey image,
borders replicated; p(i, j) = count / (H·W); entropy = −Σ p log2 p in bits. Two quirks of the authors' code are
deliberately NOT copied: dividing by the zero-padded area instead of the pixel count, and BGR grey weights.
"""

from __future__ import annotations

import numpy as np

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, applied to R, G, B in that order
MIN_COMPLEXITY = 0.05  # bits; keeps the calibrated loss finite for flat images


def to_grey8(image: np.ndarray) -> np.ndarray:
    """C×H×W float in [0, 1] (C = 1 or 3) → H×W uint8 grey levels."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a C×H×W image with C in (1, 3), got {image.shape}")
    grey = image[0] if image.shape[0] == 1 else np.tensordot(GREY_WEIGHTS, image, axes=(0, 0))
    return np.clip(np.round(grey * 255.0), 0, 255).astype(np.uint8)


def entropy_2d(image: np.ndarray) -> float:
    """2-D entropy (bits) of one C×H×W image in [0, 1]."""
    grey = to_grey8(image).astype(np.int64)
    h, w = grey.shape
    padded = np.pad(grey, 1, mode="edge")
    neighbours = sum(
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    )
    pairs = grey * 256 + neighbours // 8
    counts = np.bincount(pairs.ravel(), minlength=256 * 256)
    p = counts[counts > 0] / float(h * w)
    return float(-(p * np.log2(p)).sum())


def complexity(images: np.ndarray) -> np.ndarray:
    """Per-image 2-D entropy for an N×C×H×W batch, floored at MIN_COMPLEXITY."""
    return np.array([max(entropy_2d(img), MIN_COMPLEXITY) for img in images], dtype=np.float64)
