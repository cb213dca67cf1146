"""Early per-image decisions from the loss trajectory.

Belonging exit (exact): the best-so-far loss only falls, so once an image's score is inside the final test's
acceptance region, the full-budget verdict is already known to be "belonging".

Non-belonging exit (an envelope test): calibration stores every belonging sample's best-so-far score at each
checkpoint step t. Keep the samples that the final test accepts; their trajectories form an envelope
U(t) = max over those samples of score_i(t). An image stops as non-belonging at step t when its score exceeds
``margin`` × U(t): no accepted belonging sample was ever that far behind at that step. For an image
exchangeable with the n accepted calibration samples, the chance of lying above the maximum of n at a given
step is at most 1/(n + 1), and the margin (default 2×) makes it rarer still; the benchmark measures the effect
on accuracy against the full-budget loop (docs/accuracy.md). ``envelope_rank`` = k uses the k-th largest
accepted score instead of the maximum (a bound of k/(n + 1) per step). Before ``min_step`` nothing is
stopped: trajectories are still dominated by the random start there.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
from genorigin.runtime.decide.calibration import Calibration, calibrated_score
from genorigin.runtime.loop.outcome import BELONGING, CONTINUE, NON_BELONGING


class TrajectoryStopRule:
    """The StopRule used by attribution; built from a calibration and the decision rule ("grubbs" or
    "quantile"), whose own comparison (``Calibration.accepts``) makes the belonging exit."""

    def __init__(
        self,
        calibration: Calibration,
        rule: str = "grubbs",
        margin: float = 2.0,
        min_step: int = 100,
        envelope_rank: int = 1,
    ) -> None:
        if margin < 1.0:
            raise ValueError(f"margin must be ≥ 1, got {margin}")
        if envelope_rank < 1:
            raise ValueError(f"envelope_rank must be ≥ 1, got {envelope_rank}")
        self.calibration = calibration
        self.rule = rule
        self.accept_threshold = calibration.threshold(rule)
        self.margin = margin
        self.min_step = min_step
        self.steps = list(calibration.checkpoint_steps)
        final = np.asarray(calibration.scores)
        accepted = calibration.accepts(final, rule)
        per_step = np.asarray(calibration.checkpoint_scores, dtype=np.float64).reshape(len(self.steps), len(final))
        if not self.steps or accepted.sum() < envelope_rank:  # no trajectories: only the exact belonging exit
            self.envelope = np.full(len(self.steps), math.inf)
        else:  # the k-th largest accepted score at each step (k = 1: the maximum)
            self.envelope = -np.sort(-per_step[:, accepted], axis=1)[:, envelope_rank - 1]

    def reject_threshold(self, step: int) -> float:
        """Score above which an image at ``step`` stops as non-belonging (inf where no rule applies)."""
        j = bisect.bisect_right(self.steps, step) - 1
        if j < 0 or step < self.min_step:
            return math.inf
        return float(self.margin * self.envelope[j])

    def check(self, step: int, best_loss: np.ndarray, complexity: np.ndarray) -> np.ndarray:
        """Belonging once even the top of the score's reproducibility band is accepted (the verdict at the
        budget would be ``belonging`` on any machine); non-belonging above the envelope."""
        score = calibrated_score(best_loss, complexity)
        out = np.full(len(score), CONTINUE, dtype=np.int64)
        top = score * math.exp(self.calibration.band or 0.0)
        out[self.calibration.accepts(top, self.rule)] = BELONGING
        out[(out == CONTINUE) & (score > self.reject_threshold(step))] = NON_BELONGING
        return out
