"""Is an input inside what its calibration covers? One warning per result, for the CLI and the service.

A calibration describes the model's own samples as the calibration saw them: 8-bit PNGs at the model's size
(plain mode), those plus JPEG round trips over a quality range (robust mode, runtime/robust/modes.py), or those
also cropped and rescaled, kept at their own size (platform mode, runtime/methods/platform.py). An input
that went through something else — JPEG with a plain calibration, a JPEG quality below the robust range,
lossy WebP, an upscale from a smaller image, a large downscale, a crop to another aspect ratio, a colour
conversion — can push an own image's loss past the threshold: the verdict "non-belonging" then says less
than it seems. docs/robustness.md measures how much for each case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.robust.modes import family
from genorigin.runtime.robust.transforms import PlatformFamily

from genorigin.facts import ImageFacts

if TYPE_CHECKING:
    from genorigin.runtime.decide.result import AttributionResult

UPSCALE_TOLERANCE = 1.01  # model size ÷ source side above this: the source was smaller than the model's output
LARGE_DOWNSCALE = 0.25  # below this: the source is over 4× the model's size (not what the model wrote, or upscaled)


def coverage_warning(facts: ImageFacts, calibration: Calibration | dict[str, Any]) -> str | None:
    """Why this input lies outside what ``calibration`` covers (one line, reasons joined by "; "), or None."""
    settings = calibration.settings if isinstance(calibration, Calibration) else calibration
    fam = family(settings)
    reasons = []
    quality = f"quality {facts.jpeg_quality}" if facts.jpeg_quality is not None else "unknown quality"
    if facts.is_jpeg and fam is None:
        reasons.append(f"JPEG input ({quality}) but a plain-mode calibration (unmodified PNGs): own images may "
                       "be called non-belonging; use a robust calibration (--robust jpeg)")  # fmt: skip
    elif facts.is_jpeg and fam is not None and (facts.jpeg_quality or 0) < fam.jpeg_qualities[0]:
        lo, hi = fam.jpeg_qualities
        reasons.append(f"JPEG {quality}, below the robust calibration's range {lo}–{hi}")
    if facts.format == "WEBP":
        reasons.append("WebP input (possibly lossy): the calibration covers "
                       + ("unmodified PNGs" if fam is None else "PNGs and JPEG"))  # fmt: skip
    if isinstance(fam, PlatformFamily):
        reasons += platform_reasons(facts, fam)
    else:
        reasons += geometry_reasons(facts)
    if facts.conversion is not None:
        reasons.append(f"converted ({facts.conversion}): not the pixels as stored")
    return "; ".join(reasons) or None


def platform_reasons(facts: ImageFacts, fam: PlatformFamily) -> list[str]:
    """The platform mode inverts crops and rescales at their own size: only an aspect ratio beyond its
    family's is outside (a larger image is brought inside when read, a smaller one refused: ``ServedImages``)."""
    widest = 1.0 / fam.keep[0]
    ratio = max(facts.width, facts.height) / min(facts.width, facts.height)
    if ratio <= widest * 1.001:
        return []
    return [f"aspect ratio {ratio:.2f}, beyond the platform calibration's (its windows keep ≥ {fam.keep[0]:.0%} "
            f"of each side: at most {widest:.2f})"]  # fmt: skip


def geometry_reasons(facts: ImageFacts) -> list[str]:
    """Size and shape reasons for the modes that take the model's size (plain, jpeg)."""
    reasons = []
    ratio = stored_scale(facts)
    if ratio is not None and ratio > UPSCALE_TOLERANCE:
        reasons.append(f"upscaled ×{ratio:.2f} to the model's size: smaller than the model's output, so detail "
                       "the model made is gone")  # fmt: skip
    elif ratio is not None and ratio < LARGE_DOWNSCALE:
        reasons.append(f"downscaled ×{ratio:.2f} to the model's size: far larger than the model's output")
    if facts.width != facts.height:
        reasons.append(f"not square ({facts.width}×{facts.height}): only the centre square is compared")
    return reasons


def stored_scale(facts: ImageFacts) -> float | None:
    """Model side ÷ the stored image's short side (JPEG DCT scaling at decode does not count), or None before
    ``ImageFacts.prepared``."""
    if facts.scale is None or facts.crop_box is None:
        return None
    model_side = facts.scale[0] * (facts.crop_box[2] - facts.crop_box[0])
    return model_side / min(facts.width, facts.height)


def record_input(result: AttributionResult, facts: ImageFacts, calibration: Calibration | None) -> None:
    """Put the input's facts (``result.input``) and, when it lies outside ``calibration``, the warning
    (``result.warning``) into ``result``: the one call for whoever knows the facts (file reads, uploads)."""
    result.input = facts.to_dict()
    result.warning = coverage_warning(facts, calibration) if calibration is not None else None
