"""Where the loop takes its images: a ``WorkItem`` per image, from a fixed list or a live queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class WorkItem:
    """One image for the loop: ``key`` comes back with its outcome; ``cancelled`` frees its slots early."""

    key: Any
    image: np.ndarray  # C×H×W float32 in [0, 1]
    complexity: float = 1.0
    cancelled: Callable[[], bool] | None = None


class WorkSource(Protocol):
    """Where the loop takes its images: a fixed list, or a live queue (the service)."""

    def take(self, limit: int, wait: bool) -> list[WorkItem]:
        """Up to ``limit`` items; ``wait``: the loop is idle, block until work arrives or the source ends."""
        ...

    def finished(self) -> bool:
        """No item will ever come again."""
        ...


class ListSource:
    """A fixed list of items, taken in order."""

    def __init__(self, items: Sequence[WorkItem]) -> None:
        self.items = list(items)
        self.next = 0

    def take(self, limit: int, wait: bool) -> list[WorkItem]:
        out = self.items[self.next : self.next + limit]
        self.next += len(out)
        return out

    def finished(self) -> bool:
        return self.next >= len(self.items)
