"""The robust mode (issue 13): what turning it on changes, in one place.

A user asks for it knowingly (``robust_settings(settings, "jpeg")``; CLI ``--robust jpeg``) and it is part of
the inversion settings, so the calibration records it and an attributor refuses a calibration made in the
other mode. It changes two things, each measured against the plain mode in docs/robustness.md:

(a) calibration: the own samples go through random draws of a transform family (runtime/robust/transforms.py,
    ``ROBUST_FAMILIES``) before inversion, so the belonging distribution is that of what a platform serves;
(b) the loss: a block-DCT projection of the residual that JPEG barely touches (kernels/projection.py).

And one consequence: an own image that went through JPEG cannot be matched below its compression error, so
the stall detector's "converged" floor rises to the projected compression error of the calibration's own
samples (``calibration_samples``); a plain calibration keeps the 8-bit quantisation floor.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from genorigin.kernels.projection import PROJECTIONS, noise_gain
from genorigin.kernels.reference import loss_and_grad
from genorigin.runtime.loop.settings import ROBUST_MODES, InversionSettings
from genorigin.runtime.robust.transforms import ROBUST_FAMILIES, PlatformFamily, TransformFamily

ROBUST_LOSS = {"jpeg": "mse-dct8", "platform": "mse-dct8"}  # the loss a robust mode turns on
PLATFORM_HALVING = (10,)  # the platform mode's two starts race for 10 steps, then the better one goes on
# what src/genorigin/robustness_eval.py evaluates: plain, robust, and each half of the robust mode alone, and the
# platform mode (here, not there: `genorigin robustness --help` lists them without importing the loop)
EVALUATION_MODES = ("plain", "robust", "calibration-only", "loss-only", "platform")
FLOOR_QUANTILE = 0.9  # of the calibration's compression errors: the robust stall floor (calibration_samples)


def robust_settings(settings: InversionSettings, mode: str) -> InversionSettings:
    """``settings`` in robust mode ``mode`` (its family and its loss); "none" leaves them as they are. The
    platform mode also gives a single-start procedure a second start (runtime/methods/platform.py), halved at
    step 10."""
    if mode not in ROBUST_MODES:
        raise ValueError(f"unknown robust mode {mode!r}; choose one of {', '.join(ROBUST_MODES)}")
    if mode == "none":
        return settings
    if mode == "platform" and settings.restarts == 1:  # the platform encoder's window, and the size's own
        settings = replace(settings, restarts=2, halve_starts_at=settings.halve_starts_at or PLATFORM_HALVING)
    return replace(settings, robust=mode, loss=ROBUST_LOSS[mode])


def family(settings: InversionSettings | dict) -> TransformFamily | PlatformFamily | None:
    """The transform family a calibration with these settings drew from (None: own samples as written)."""
    mode = settings.robust if isinstance(settings, InversionSettings) else settings.get("robust", "none")
    return ROBUST_FAMILIES[mode]


def quantization_floor(loss: str, channels: int = 3) -> float:
    """The loss below which an 8-bit target cannot be matched: the rounding noise, uniform on ±1/510.

    A trajectory near this floor has converged, not stalled (``StallDetector``); twice the noise leaves room
    for the part of it the latent cannot absorb either way. A projection loss keeps its ``noise_gain`` share.
    """
    step = 1.0 / 255.0
    if loss == "l1":
        return 2.0 * step / 4.0
    gain = noise_gain(loss, channels) if loss in PROJECTIONS else 1.0
    return 2.0 * step * step / 12.0 * gain


def calibration_samples(
    settings: InversionSettings, samples: np.ndarray, seed: int
) -> tuple[np.ndarray | list[np.ndarray], list[str] | None, float]:
    """What the calibration inverts: (images, the transform each went through or None, the stall floor).

    Plain mode: the 8-bit samples and the quantisation floor. Robust mode: each sample through its own draw
    of the family (seeded by ``seed``), and the floor raised by the 90th percentile of the samples' projected
    compression errors — the loss each drawn image has at its clean original, which it cannot go much below:
    a trajectory stopped there has converged. (With the median, about half of the own samples were
    "stalled" and restarted in calibration, uselessly; docs/robustness.md.) The platform family serves each
    sample at its own size (a list of images); its compression error is measured against the sample served
    through the same window without JPEG.
    """
    base = quantization_floor(settings.loss, samples.shape[1])
    fam = family(settings)
    if fam is None:
        return samples, None, base
    images, names = fam.apply(samples, seed)
    if isinstance(fam, PlatformFamily):
        refs = fam.references(samples, seed)
        error = [float(loss_and_grad(a[None], b[None], settings.loss)[0][0]) for a, b in zip(images, refs)]
    else:
        error, _ = loss_and_grad(images, samples, settings.loss)
    return images, names, base + float(np.quantile(np.asarray(error, dtype=np.float64), FLOOR_QUANTILE))
