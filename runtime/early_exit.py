"""Early per-image decisions from the loss trajectory, at no cost in accuracy by construction or by test.

Belonging exit (exact): the best-so-far loss only falls, so once an image's score is inside the final test's
acceptance region, the full-budget verdict is already known to be "belonging".

Non-belonging exit (a test): calibration stores the belonging scores at every checkpoint step t. At step t an
image stops as non-belonging when its log-score is an outlier against the belonging log-scores at t, at a
level α_e split evenly (Bonferroni) over all checkpoints, AND exceeds ``margin`` times the worst belonging
score seen at t. The Gaussian part bounds the chance that a belonging image is stopped early by α_e overall
(default α/10, on top of the final test's α) when log-scores at t are near-normal; the empirical part guards
the heavy upper tail that slow-converging belonging samples give mid-run, which a Gaussian fit underrates.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
from genorigin.runtime.calibration import Calibration, calibrated_score
from genorigin.runtime.inversion import BELONGING, CONTINUE, NON_BELONGING
from scipy import stats


class TrajectoryStopRule:
    """The StopRule used by attribution; built from a calibration and the primary decision rule."""

    def __init__(
        self,
        calibration: Calibration,
        accept_threshold: float,
        early_alpha: float | None = None,
        min_step: int = 100,
        margin: float = 10.0,
    ) -> None:
        self.accept_threshold = accept_threshold
        self.min_step = min_step
        self.log_margin = math.log(margin)
        self.steps = list(calibration.checkpoint_steps)
        k = max(len(self.steps), 1)
        alpha_e = calibration.alpha / 10.0 if early_alpha is None else early_alpha
        self.z_crit = float(stats.norm.isf(alpha_e / k))
        logs = [np.log(np.maximum(np.asarray(s, dtype=np.float64), 1e-30)) for s in calibration.checkpoint_scores]
        self.log_mean = [float(a.mean()) for a in logs]
        self.log_std = [float(a.std(ddof=1)) for a in logs]
        self.log_max = [float(a.max()) for a in logs]

    def reject_threshold(self, step: int) -> float:
        """Score above which an image at ``step`` is stopped as non-belonging (inf before any checkpoint)."""
        j = bisect.bisect_right(self.steps, step) - 1
        if j < 0 or step < self.min_step:
            return math.inf
        log_thr = max(self.log_mean[j] + self.z_crit * self.log_std[j], self.log_max[j] + self.log_margin)
        return math.exp(log_thr)

    def check(self, step: int, best_loss: np.ndarray, complexity: np.ndarray) -> np.ndarray:
        score = calibrated_score(best_loss, complexity)
        out = np.full(len(score), CONTINUE, dtype=np.int64)
        out[score <= self.accept_threshold] = BELONGING
        out[(out == CONTINUE) & (score > self.reject_threshold(step))] = NON_BELONGING
        return out
