"""The belonging test: one-sided Grubbs outlier test and an empirical-quantile rule.

Null hypothesis: the image's calibrated loss A comes from the belonging distribution (µ, σ, N estimated on the
model's own samples). A large A is evidence that the model did not make the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from genorigin.runtime.decide.student_t import t_isf, t_sf


def grubbs_critical_value(n: int, alpha: float) -> float:
    """One-sided Grubbs critical value G_crit for a sample of n at level alpha."""
    if n < 3:
        raise ValueError(f"Grubbs' test needs at least 3 belonging samples, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t = t_isf(alpha / n, n - 2)  # the upper α/n quantile (runtime/decide/student_t.py: no scipy.stats at start-up)
    return float((n - 1) / math.sqrt(n) * math.sqrt(t * t / (n - 2 + t * t)))


def grubbs_p_value(g: float, n: int) -> float:
    """Bonferroni-style p-value of the one-sided Grubbs statistic g (the inverse of the critical value)."""
    u = g * math.sqrt(n) / (n - 1)
    if u <= 0.0:
        return 1.0
    if u >= 1.0:
        return 0.0
    t = math.sqrt(u * u * (n - 2) / (1.0 - u * u))
    return float(min(1.0, n * t_sf(t, n - 2)))


def empirical_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ⌈(N+1)(1−α)⌉-th smallest belonging score: a fresh belonging score exceeds it with prob ≤ α."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(s) + 1) * (1.0 - alpha))
    return float(s[min(k, len(s)) - 1])


@dataclass(frozen=True)
class TestOutcome:
    belonging: bool
    statistic: float
    critical_value: float
    p_value: float | None


def grubbs_statistic(score: np.ndarray | float, mean: float, std: float) -> np.ndarray:
    """G = (score − µ)/σ, elementwise in float64: THE statistic, so every caller compares the same bits."""
    score = np.asarray(score, dtype=np.float64)
    if std > 0:
        return (score - mean) / std
    return np.where(score > mean, math.inf, -math.inf)


def grubbs_accepts(score: np.ndarray | float, mean: float, std: float, n: int, alpha: float) -> np.ndarray:
    """Belonging by Grubbs' test, elementwise: the verdict's comparison, also used by the early exit (so a
    ``belonging`` stop can never come with a ``non-belonging`` verdict at the boundary)."""
    return grubbs_statistic(score, mean, std) <= grubbs_critical_value(n, alpha)


def quantile_accepts(score: np.ndarray | float, threshold: float) -> np.ndarray:
    """Belonging by the empirical quantile, elementwise."""
    return np.asarray(score, dtype=np.float64) <= threshold


def grubbs_test(score: float, mean: float, std: float, n: int, alpha: float) -> TestOutcome:
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}")
    g = float(grubbs_statistic(score, mean, std))
    crit = grubbs_critical_value(n, alpha)
    p = grubbs_p_value(g, n) if math.isfinite(g) else (0.0 if g > 0 else 1.0)
    belonging = bool(grubbs_accepts(score, mean, std, n, alpha))
    return TestOutcome(belonging=belonging, statistic=g, critical_value=crit, p_value=p)


def quantile_test(score: float, threshold: float, scores: np.ndarray) -> TestOutcome:
    exceed = float((np.asarray(scores) >= score).sum() + 1) / (len(scores) + 1)
    return TestOutcome(
        belonging=bool(quantile_accepts(score, threshold)),
        statistic=float(score),
        critical_value=threshold,
        p_value=exceed,
    )
