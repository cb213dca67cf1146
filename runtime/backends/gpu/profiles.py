"""TensorRT optimisation profiles over the batch dimension (pure: no TensorRT, no GPU)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class BatchProfile:
    """One TensorRT optimisation profile over the batch dimension: the engine accepts min ≤ N ≤ max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 ≤ min ≤ opt ≤ max, got {self.min}:{self.opt}:{self.max}")

    def contains(self, n: int) -> bool:
        return self.min <= n <= self.max

    def to_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


DEFAULT_PROFILES: tuple[BatchProfile, ...] = (BatchProfile(1, 32, 256),)


def parse_profile(spec: str) -> BatchProfile:
    """``"min:opt:max"`` (CLI form); ``"max"`` alone means ``1:max:max``."""
    parts = [p.strip() for p in str(spec).split(":")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"batch profile {spec!r} must be 'min:opt:max' or 'max' (integers)") from None
    if len(values) == 1:
        return BatchProfile(1, values[0], values[0])
    if len(values) != 3:
        raise ValueError(f"batch profile {spec!r} must be 'min:opt:max' or 'max'")
    return BatchProfile(*values)


def choose_profile(batch: int, profiles: Sequence[BatchProfile]) -> int:
    """Index of the profile to run ``batch`` under: the tightest range that contains it, then the nearest opt."""
    candidates = [i for i, p in enumerate(profiles) if p.contains(batch)]
    if not candidates:
        ranges = ", ".join(str(p) for p in profiles) or "none"
        raise ValueError(f"batch {batch} is outside every optimisation profile ({ranges})")
    return min(candidates, key=lambda i: (profiles[i].max - profiles[i].min, abs(profiles[i].opt - batch), i))
