"""Do several backends reach the same answers? One comparator for tests, benchmarks and checks.

Like Polygraphy's ``Comparator`` (run every runner on the same inputs, then compare each output with the
first runner's), but at the level genorigin decides on: every backend inverts the same targets through the
shared loop (``inversion.invert``, same settings and schedule, so the same random starts), and each image's
best loss is compared with the first backend's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from genorigin.export.generator import LatentSpec
from genorigin.runtime.loop.backend import Backend
from genorigin.runtime.loop.inversion import invert
from genorigin.runtime.loop.settings import InversionSettings, Schedule


@dataclass(frozen=True)
class BackendComparison:
    """Per-image best losses of every backend and how far each is from the reference (the first)."""

    reference: str
    best_loss: dict[str, np.ndarray]
    rtol: float
    atol: float

    def disagree(self, name: str) -> np.ndarray:
        """Images where |loss − reference| > max(rtol·|reference|, atol), as pytest.approx judges; NaN disagrees."""
        ref, got = self.best_loss[self.reference], self.best_loss[name]
        return ~(np.abs(got - ref) <= np.maximum(self.rtol * np.abs(ref), self.atol))

    def max_rel_error(self) -> dict[str, float]:
        ref = self.best_loss[self.reference]
        tiny = np.finfo(np.float64).tiny
        return {
            n: float((np.abs(v - ref) / np.maximum(np.abs(ref), tiny)).max(initial=0.0))
            for n, v in self.best_loss.items() if n != self.reference
        }  # fmt: skip

    def failures(self) -> list[str]:
        """One line per image on which a backend disagrees with the reference."""
        ref = self.best_loss[self.reference]
        return [
            f"{name}: image {i} best loss {self.best_loss[name][i]:.6g} vs {self.reference} {ref[i]:.6g}"
            for name in self.best_loss if name != self.reference
            for i in np.flatnonzero(self.disagree(name))
        ]  # fmt: skip

    @property
    def ok(self) -> bool:
        return not self.failures()

    def check(self) -> None:
        """AssertionError listing every disagreement (for tests and scripted checks)."""
        bad = self.failures()
        if bad:
            raise AssertionError(f"backends disagree (rtol={self.rtol}, atol={self.atol}):\n" + "\n".join(bad))


def compare_backends(
    backends: Mapping[str, Backend],
    targets: np.ndarray,
    settings: InversionSettings,
    rtol: float,
    *,
    latent: LatentSpec,
    schedule: Schedule | None = None,
    atol: float = 0.0,
) -> BackendComparison:
    """Invert ``targets`` on every backend (early exit off unless ``schedule`` says otherwise) and compare."""
    if len(backends) < 2:
        raise ValueError("compare_backends needs at least two backends")
    schedule = schedule or Schedule(early_exit=False)
    losses = {
        name: np.array([o.best_loss for o in invert(backend, targets, latent, settings, schedule)], np.float64)
        for name, backend in backends.items()
    }
    return BackendComparison(next(iter(backends)), losses, rtol, atol)
