"""The reproducibility band: how far another CPU's rounding can move a score, measured at calibration.

On one machine a score is the same bits in any batch (``runtime/loop/invariant.py``). Another machine's kernels
round differently (other SIMD widths, other convolution algorithms: ``ATEN_CPU_CAPABILITY``), and a
non-convex inversion amplifies last-bit differences into different trajectories. No tolerance recorded on
one CPU can hold on every other, so the calibration measures the spread instead: it replays some of its own
samples with every gradient element moved by one unit in the last place (as a kernel that rounds the other
way would) and records the largest |log(score′/score)| as the band. A result whose ``score·e^{±band}``
straddles the threshold is reported ``uncertain`` with both readings (``attribution.band_readings``).
docs/accuracy.md compares the band with the spread measured across instruction sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from genorigin.runtime.loop.backend import Array, Backend

BAND_SAMPLES = 16  # own samples replayed per calibration: ~16 % more calibration work at the default 100


def flip_last_bit(a: Array) -> Array:
    """Every float32 element moved by one unit in the last place (its lowest mantissa bit toggled)."""
    if isinstance(a, torch.Tensor):
        return (a.float().contiguous().view(torch.int32) ^ 1).view(torch.float32).to(a.dtype)
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.int32) ^ 1).view(np.float32)


class PerturbedRounding(Backend):
    """``inner``'s loss and gradient with each gradient element one ULP off: another CPU's rounding."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f"{inner.name}+ulp"
        self.max_slots = inner.max_slots

    def asarray(self, a: np.ndarray) -> Array:
        return self.inner.asarray(a)

    @property
    def state_device(self) -> torch.device:
        return self.inner.state_device

    def loss_and_grad(self, z: Array, x: Array) -> tuple[Array, Array]:
        loss, grad = self.inner.loss_and_grad(z, x)
        return loss, flip_last_bit(grad)

    def render(self, z: np.ndarray) -> np.ndarray:
        return self.inner.render(z)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "perturbed": "gradient ±1 ulp"}


def band_indices(n: int, k: int = BAND_SAMPLES) -> np.ndarray:
    """Which of n calibration samples are replayed: k spread evenly (all when n ≤ k)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def band_from(losses: Sequence[float], replayed: Sequence[float]) -> float:
    """The largest |log(replayed/loss)| over samples with finite positive losses in both runs (0 if none)."""
    ratios = [abs(math.log(b / a)) for a, b in zip(losses, replayed)
              if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]  # fmt: skip
    return max(ratios, default=0.0)


__all__ = ["BAND_SAMPLES", "PerturbedRounding", "band_from", "band_indices", "flip_last_bit"]
