"""JPEG quality from the quantisation tables: which IJG/libjpeg quality setting wrote this file?

libjpeg (and so Pillow, most web tools and many cameras' converters) derives its tables from the
standard ones of ITU-T T.81 Annex K, scaled by one factor per quality q = 1..100. Inverting that scaling on
the luminance table gives the quality back; it is exact (error 0) for every file libjpeg wrote at q = 1..100,
since no two qualities give the same table. Tables from other encoders (Photoshop, camera firmware) get the
nearest IJG quality and a non-zero error, so a caller can tell an estimate from an exact answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# ITU-T T.81 Annex K.1, luminance, in natural (row-major) order: the order Pillow's ``quantization`` uses.
STD_LUMINANCE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()


def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes at ``quality`` (``jpeg_set_quality`` with force_baseline)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((STD_LUMINANCE * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([ijg_table(q) for q in range(1, 101)]).astype(np.float64)


@dataclass(frozen=True)
class QualityEstimate:
    """The IJG quality nearest to a file's luminance table, and how far that table is from it."""

    quality: int
    rms_error: float  # RMS difference, in quantiser steps, between the file's table and the IJG one; 0: exact

    @property
    def exact(self) -> bool:
        return self.rms_error == 0.0


def estimate_quality(luminance: Sequence[int]) -> QualityEstimate:
    """Least-squares nearest IJG quality for a 64-entry luminance table in natural order."""
    table = np.asarray(luminance, dtype=np.float64)
    if table.shape != (64,):
        raise ValueError(f"a JPEG quantisation table has 64 entries, got shape {table.shape}")
    mse = ((_IJG_TABLES - table) ** 2).mean(axis=1)
    best = int(np.argmin(mse))
    return QualityEstimate(quality=best + 1, rms_error=float(np.sqrt(mse[best])))
