"""What the loop says about an image: a stop rule's ``Decision`` at a checkpoint, and the final outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import numpy as np


class Decision(IntEnum):
    """What a stop rule says about an image at a checkpoint."""

    CONTINUE = 0
    BELONGING = 1
    NON_BELONGING = 2


CONTINUE, BELONGING, NON_BELONGING = Decision.CONTINUE, Decision.BELONGING, Decision.NON_BELONGING


class StopRule(Protocol):
    """Early decision at a checkpoint: a ``Decision`` per image."""

    def check(self, step: int, best_loss: np.ndarray, complexity: np.ndarray) -> np.ndarray: ...


@dataclass
class InversionOutcome:
    """What the loop learned about one image."""

    best_loss: float
    best_z: np.ndarray
    steps: int
    stop_reason: str  # "budget", "belonging", "non-belonging", "cancelled"
    seconds: float
    trajectory: list[tuple[int, float]] = field(default_factory=list)
    evaluations: int = 0  # loss-and-gradient evaluations summed over the image's starts
    restart_steps: list[int] = field(default_factory=list)  # image steps at which fresh starts were added

    @property
    def fresh_starts(self) -> int:
        """Adaptive restarts the image received."""
        return len(self.restart_steps)
