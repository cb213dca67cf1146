"""Who gets in, for how long, and what a refusal says: limits, deadlines, reservations, the bearer token.

A request reserves one job per target model before its body is read and the rest once its files are counted;
when a model's bound (batch size + queue) is full it is answered ``503`` with ``Retry-After`` at once, so an
overload costs neither waiting nor memory. Its deadline runs from the moment its headers arrived.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from genorigin.service.batching import ModelWorker
from genorigin.service.errors import ServiceError

MAX_DEADLINE_MS = 3_600_000


@dataclass(frozen=True)
class Limits:
    """The service's knobs that are not the model's (``genorigin serve`` flags)."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_files: int = 16  # images in one multipart request
    deadline_ms: float = 30_000.0  # default per-request deadline
    read_timeout_s: float = 10.0  # silence allowed while headers or body arrive
    cancel_grace_s: float = 5.0  # after a deadline: wait this long for the loop's checkpoint report
    drain_timeout_s: float = 60.0  # SIGTERM: the longest in-flight requests are waited for
    token: str | None = None  # bearer token required on /v1/* and /metrics

    @property
    def drain_limit_bytes(self) -> int:
        """An over-size body is read and discarded up to here, so its sender sees the 413, not a reset."""
        return min(4 * self.max_body_bytes, 256 * 1024 * 1024)


def parse_deadline_ms(header: str | None, query: str | None, default_ms: float) -> float:
    """The request's deadline in ms: header ``X-Deadline-Ms``, else query ``deadline_ms``, else the default."""
    raw = header if header is not None else query
    if raw is None:
        return default_ms
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_MS):
        raise ServiceError("bad_request", f"deadline must be a number of milliseconds in (0, {MAX_DEADLINE_MS}], "
                           f"got {raw!r}")  # fmt: skip
    return value


def check_token(authorization: str | None, token: str | None) -> None:
    """Constant-time bearer check; no token configured: every request passes."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ServiceError("unauthorized", "a valid bearer token is required (Authorization: Bearer …)",
                           headers={"WWW-Authenticate": 'Bearer realm="genorigin"'})  # fmt: skip


def retry_after_s(workers: Sequence[ModelWorker]) -> int:
    """Seconds after which a retry is likely to find room: the fuller queue's depth over the batch size,
    times the mean time a batch slot stays busy (1 s until anything was measured), at least 1."""
    waits = [w.queue_seconds_estimate() for w in workers]
    return max(1, min(60, math.ceil(max(waits, default=1.0))))


class Reservation:
    """Jobs a request has reserved on each target worker; what is not handed to a worker is given back."""

    def __init__(self, workers: Mapping[str, ModelWorker]) -> None:
        self.workers = dict(workers)
        self.held: dict[str, int] = dict.fromkeys(self.workers, 0)

    def grow(self, n: int) -> None:
        """Reserve ``n`` more jobs on every target, all or none; ``503 overloaded`` when any bound is full."""
        taken: list[str] = []
        for name, w in self.workers.items():
            if not w.try_reserve(n):
                for t in taken:
                    self.workers[t].release(n)
                    self.held[t] -= n
                raise ServiceError("overloaded", f"model {name!r} has {w.capacity} requests in flight: retry later",
                                   headers={"Retry-After": str(retry_after_s([w]))},
                                   details={"model": name, "capacity": w.capacity})  # fmt: skip
            self.held[name] += n
            taken.append(name)

    def handed_over(self, name: str, n: int) -> None:
        """``n`` reserved jobs were submitted: the worker releases them when they are answered."""
        self.held[name] -= n

    def release(self) -> None:
        for name, n in self.held.items():
            if n:
                self.workers[name].release(n)
        self.held = dict.fromkeys(self.workers, 0)
