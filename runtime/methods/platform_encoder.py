"""The platform encoder: from a received image (drawn into the model's frame) to a start of (z, θ).

Fitted once per model, like the model's encoder, on own samples served through the platform family
(runtime/robust/transforms.py ``ROBUST_FAMILIES["platform"]``): each training pair is an image a platform could have
served and the (z, θ) that made it, θ in the view's units (export/geometry.py). It starts from the model's
encoder's weights (its first outputs are the model's latent) and adds the four geometry outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from genorigin.export.generator import Generator
from genorigin.export.geometry import THETA_DIM, GeometryUnits, theta_for, to_frame
from genorigin.runtime.loop.settings import FitSettings
from genorigin.runtime.methods.encoder import EncoderShape, FittedEncoder, Pairs, fit_encoder
from genorigin.runtime.robust.transforms import ROBUST_FAMILIES, PlatformFamily

PLATFORM_FIT = FitSettings(steps=2000, lr=5e-4)  # measured on dcgan_a: θ's error stops falling by ~1500 steps


def platform_encoder_path(encoder_path: str | Path) -> Path:
    """Where a model's platform encoder lives: beside its encoder (``x.encoder.pt`` → ``x.platform-encoder.pt``)."""
    path = Path(encoder_path)
    stem = path.name[: -len(".encoder.pt")] if path.name.endswith(".encoder.pt") else path.stem
    return path.with_name(f"{stem}.platform-encoder.pt")


def platform_pairs(generator: Generator, family: PlatformFamily, units: GeometryUnits = GeometryUnits()) -> Pairs:
    """Training pairs: z from the prior, M(z) served through one family draw each, seen in the model's frame;
    the target is (z, θ of the draw's window at its served size)."""
    frame = generator.image_size

    def pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        z = generator.latent.sample(n, rng)
        own = np.clip(generator.render_latents(z), 0.0, 1.0)
        images, targets = [], []
        for i in range(n):
            draw = family.draw(rng, frame)
            images.append(to_frame(draw.apply_one(own[i]), frame))
            targets.append(theta_for(draw.window, draw.out_size, frame, units))
        latent = np.concatenate([z.reshape(n, -1), np.stack(targets)], axis=1)
        return np.stack(images).astype(np.float32), latent.astype(np.float32)

    return pairs


def fit_platform_encoder(
    generator: Generator,
    encoder: FittedEncoder | None,
    settings: FitSettings = PLATFORM_FIT,
    *,
    seconds: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FittedEncoder:
    """The platform encoder of ``generator``, warm-started from its fitted ``encoder`` if given."""
    family = ROBUST_FAMILIES["platform"]
    assert isinstance(family, PlatformFamily)
    c, (h, w) = generator.channels, generator.image_size
    shape = EncoderShape(c, h, w, (math.prod(generator.latent.shape) + THETA_DIM,))
    return fit_encoder(generator.render_latents, generator.latent, (c, h, w), None, settings, seconds=seconds,
                       on_step=on_step, shape=shape, pairs=platform_pairs(generator, family),
                       warm_start=None if encoder is None else encoder.module)  # fmt: skip
