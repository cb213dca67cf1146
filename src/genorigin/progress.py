"""Progress on stderr: a live bar on a terminal, periodic lines in a log.

A bar redraws in place, which a log file or a CI console shows as one unreadable line (or nothing until the
end). When stderr is not a terminal, a line like ``attributing: 12/48 images, 3.1 images/s, ETA 12 s``
is written every ``$GENORIGIN_PROGRESS_SECONDS`` (default 10) seconds, and once at the end.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Any, TextIO

INTERVAL_ENV = "GENORIGIN_PROGRESS_SECONDS"


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else 10.0
    except ValueError:
        return 10.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """``with Progress(total, "attributing", "images") as p: ... p.update()``; silent when ``quiet``."""

    def __init__(
        self, total: int, desc: str, unit: str = "images", *, quiet: bool = False, stream: TextIO | None = None
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._bar: Any = None
        self._lines = not quiet and not self.stream.isatty()
        self._start = time.monotonic()
        self._last = self._start
        self._interval = _interval()
        if not quiet and not self._lines:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(finished=kind is None)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and time.monotonic() - self._last >= self._interval and self.done < self.total:
            self._write()

    def line(self) -> str:
        """``desc: done/total unit, rate unit/s, ETA …`` (the ETA assumes the rate so far holds)."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}, {rate:.3g} {self.unit}/s"
        if self.done >= self.total:
            return f"{text}, done in {_duration(elapsed)}"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{text}, ETA {_duration(eta) if eta != float('inf') else '?'}"

    def _write(self) -> None:
        self._last = time.monotonic()
        print(self.line(), file=self.stream, flush=True)

    def close(self, finished: bool = True) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines and finished and self.total:
            self._write()
        self._lines = False
