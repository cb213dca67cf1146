"""The restart policy: when an image's trajectory has stalled, and why an image stops at a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

from genorigin.runtime.loop.outcome import BELONGING, NON_BELONGING, Decision
from genorigin.runtime.loop.settings import InversionSettings


class StallDetector:
    """Adaptive restarts: is an image's best loss stalled, rather than still falling or converged?

    Read from the trajectory alone: stalled when the best loss has fallen by less than ``factor`` over the
    last ``window`` steps while it is still above ``floor`` (the loss that counts as converged: an 8-bit
    target cannot be matched better than its quantisation noise, ≈ (1/255)²/12 for MSE). A slowly
    converging trajectory keeps falling by more than the factor per window and is left alone.
    """

    def __init__(self, window: int, factor: float, floor: float = 0.0) -> None:
        self.window = window
        self.factor = factor
        self.floor = floor

    def stalled(self, trajectory: Sequence[tuple[int, float]], since: int) -> bool:
        """``since``: the step the image's current starts began (a fresh start gets a whole window)."""
        if not trajectory:
            return False
        step, loss = trajectory[-1]
        if step - since < self.window or loss <= self.floor:
            return False
        then = [v for s, v in trajectory if s <= step - self.window and s >= since]
        return bool(then) and then[-1] < self.factor * loss


def may_restart(
    trajectory: Sequence[tuple[int, float]], restart_steps: Sequence[int], settings: InversionSettings,
    stall: StallDetector,
) -> bool:  # fmt: skip
    """An image gets its fresh starts before it may be called non-belonging, if its trajectory stalled."""
    since = restart_steps[-1] if restart_steps else 0
    return len(restart_steps) < settings.fresh_starts and stall.stalled(trajectory, since)


def stop_reason(decision: Decision, steps: int, settings: InversionSettings, restartable: bool) -> str | None:
    """Why an image stops at a checkpoint, or None: the rule's verdict (a stalled image with fresh starts
    left is restarted instead of called non-belonging), else the spent budget."""
    if decision == BELONGING:
        return "belonging"
    if decision == NON_BELONGING and not restartable:
        return "non-belonging"
    if steps >= settings.steps:
        return "budget"
    return None
