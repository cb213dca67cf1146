"""LatentTracer on the shared loop: inversion of a latent-diffusion decoder started from its own encoder.

The autoencoder's posterior mean of the image is restart 0 (seeded jitter around it for more restarts), then
Adam with lr 0.05 halved every 50 steps, for 100 steps. Calibrations record the method "inversion-encoder".
The model itself (``LatentDiffusionModel``: the decoder as a Generator, plus its encoder) is loaded by
``genorigin.export.latent_diffusion``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from genorigin.export.latent_diffusion import LatentDiffusionModel
from genorigin.runtime.loop.settings import TRACER_METHOD, TRACER_SETTINGS, InversionSettings  # the presets: plain data
from genorigin.runtime.loop.starts import image_key
from genorigin.runtime.methods.attribution import Attributor


class EncoderInit:
    """Initial latents from the autoencoder's encoder: the posterior mean for restart 0, seeded jitter for more.

    The loop's ``Initializer``: ``EncoderInit(model)(image C×H×W, restarts) → restarts×latent``.
    """

    def __init__(self, model: LatentDiffusionModel, jitter: float = 0.1) -> None:
        self.model = model
        self.jitter = jitter

    def __call__(self, image: np.ndarray, restarts: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``rng`` (the loop's per-image generator) is unused: the jitter has its own seed, as LatentTracer's."""
        mean = self.model.encode(image[None])[0]
        rng = np.random.default_rng(image_key(image))
        extra = rng.standard_normal((restarts - 1, *mean.shape), dtype=np.float32) * self.jitter
        return np.concatenate([mean[None], mean[None] + extra]).astype(np.float32)


def latent_tracer(
    model: LatentDiffusionModel, settings: InversionSettings = TRACER_SETTINGS, **kwargs: Any
) -> Attributor:
    """LatentTracer through the shared loop: encoder-mean starts, lr halved every 50 steps, 100 steps."""
    if settings.init != "encoder":
        raise ValueError("LatentTracer settings need init='encoder'")
    return Attributor(
        model.generator, settings=settings, initializer=EncoderInit(model), method=TRACER_METHOD, **kwargs
    )
