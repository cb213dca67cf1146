"""Each image's random starts, seeded by (seed, the image's pixels): independent of batching, order and arrival."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from genorigin.export.generator import LatentSpec

# (image C×H×W, starts R, the image's own seeded generator) → R×latent starts
Initializer = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def image_key(image: np.ndarray) -> int:
    """A 64-bit key of an image's pixels, to seed its random starts."""
    digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


def image_rng(seed: int, image: np.ndarray) -> np.random.Generator:
    """The generator of one image's starts: independent of batching, order and arrival time."""
    return np.random.default_rng((seed, image_key(image)))


def initial_latents(latent: LatentSpec, seed: int, image: np.ndarray, restarts: int) -> np.ndarray:
    """The R random starts of one image: independent of batching and order, so any schedule reproduces them."""
    return latent.sample(restarts, image_rng(seed, image))
