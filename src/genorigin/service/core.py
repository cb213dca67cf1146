"""The service's state: its models' workers, limits, metrics, warm-up, readiness and draining.

Ready means every model is loaded with a checked calibration (``loading``), every worker is alive and its last
inversion did not fail, each model answered one of its own samples end to end through its worker (the
warm-up), and the service is not draining. Alive (``/healthz``) means every worker thread is running.
Draining (``SIGTERM``) refuses new requests with ``503`` and lets the admitted ones finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.live import BatchingMode
from genorigin.service.admission import Limits
from genorigin.service.batching import ModelWorker
from genorigin.service.errors import ServiceError
from genorigin.service.loading import ServedModel
from genorigin.service.metrics import ServiceMetrics

log = logging.getLogger("genorigin.service")
ALL = "all"
WARMUP_SEED = 20_231_210


class Service:
    """Workers by model name, plus what the HTTP side needs to admit, answer and report."""

    def __init__(self, models: Sequence[ServedModel], limits: Limits = Limits(), *, max_queue: int | None = None,
                 batching: BatchingMode = "continuous", max_wait_ms: float = 5.0) -> None:  # fmt: skip
        if not models:
            raise ValueError("serve at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names) or ALL in names:
            raise ValueError(f"served model names must be distinct and not {ALL!r}: {names}")
        self.limits = limits
        self.batching = batching
        self.metrics: ServiceMetrics
        self.workers: dict[str, ModelWorker] = {}
        for m in models:
            queue = max_queue if max_queue is not None else m.attributor.schedule.batch_size
            self.workers[m.name] = ModelWorker(
                m,
                max_queue=queue,
                mode=batching,
                max_wait_ms=max_wait_ms,
                on_done=lambda job, r, name=m.name: self.metrics.job_done(name, job, r),
            )
        self.warm: dict[str, bool] = dict.fromkeys(self.workers, False)
        self.warmup_errors: dict[str, str] = {}
        self.draining = False
        self.drain_started = 0.0
        self.in_flight = 0  # attribution requests being handled (event-loop thread only)
        self.metrics = ServiceMetrics(self.workers, self.ready)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, warm_up: bool = True) -> None:
        for w in self.workers.values():
            w.start()
        if warm_up:
            threading.Thread(target=self._warm_up, name="genorigin-warm-up", daemon=True).start()
        else:
            self.warm = dict.fromkeys(self.workers, True)

    def _warm_up(self) -> None:
        """One own sample per model through its worker: ready only once the whole path has answered."""
        for name, w in self.workers.items():
            gen = w.served.attributor.generator
            try:
                job = w.job("warm-up", quantize_8bit(gen.sample(1, seed=WARMUP_SEED))[0], time.monotonic() + 3600)
                job.internal = True
                w.try_reserve(1, bounded=False)  # released when answered, like a request's; requests may fill
                # the bound first, and an uncounted job's release would drive the count negative
                w.submit([job])
                result = job.future.result()
                if result is None or result.stop_reason == "cancelled":
                    raise RuntimeError(job.error or "the warm-up image was not answered")
                self.warm[name] = True
                log.info("model %s warm: own sample answered %s in %d steps", name, result.verdict, result.steps)
            except Exception as exc:
                self.warmup_errors[name] = f"{type(exc).__name__}: {exc}"
                log.error("model %s failed its warm-up: %s", name, self.warmup_errors[name])

    def begin_drain(self) -> None:
        """Stop admitting (503); requests already admitted are answered. Idempotent."""
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()
            log.info("draining: refusing new requests, %d in flight", self.in_flight)

    def drained(self) -> bool:
        """Draining and nothing left to answer, or the drain timeout has passed."""
        if not self.draining:
            return False
        idle = self.in_flight == 0 and all(w.reserved == 0 for w in self.workers.values())
        return idle or time.monotonic() - self.drain_started > self.limits.drain_timeout_s

    def close(self, timeout: float = 30.0) -> None:
        for w in self.workers.values():
            w.close(timeout)

    # ------------------------------------------------------------------------------------------ probes
    def alive(self) -> bool:
        return all(w.alive for w in self.workers.values())

    def model_reasons(self, name: str) -> list[str]:
        """Why model ``name`` is not ready (empty: it is)."""
        w, reasons = self.workers[name], []
        if not w.alive:
            reasons.append(f"{name}: worker stopped")
        elif not w.healthy:
            reasons.append(f"{name}: its last inversion failed")
        if name in self.warmup_errors:
            reasons.append(f"{name}: warm-up failed ({self.warmup_errors[name]})")
        elif not self.warm[name]:
            reasons.append(f"{name}: warming up")
        return reasons

    def readiness(self) -> dict[str, Any]:
        reasons = ["draining"] if self.draining else []
        for name in self.workers:
            reasons += self.model_reasons(name)
        return {"ready": not reasons, "reasons": reasons, "models": {n: self.warm[n] for n in self.workers}}

    def ready(self) -> bool:
        return bool(self.readiness()["ready"])

    # ------------------------------------------------------------------------------------------ requests
    def targets(self, model: str | None) -> dict[str, ModelWorker]:
        """The workers a request is for: one model by name, or every model (no name, or ``all``)."""
        if model is None or model == ALL:
            return dict(self.workers)
        if model not in self.workers:
            raise ServiceError(
                "unknown_model",
                f"no model {model!r} is served here; served: {', '.join(self.workers)} (or {ALL!r})",
                details={"served": list(self.workers)},
            )
        return {model: self.workers[model]}

    def models_info(self) -> dict[str, Any]:
        return {
            "models": [w.served.info() | {"capacity": w.capacity, "batching": w.mode} for w in self.workers.values()],
            "cross_model_rule": "POST /v1/attribute without ?model= (or model=all) answers with decide_across",
        }
