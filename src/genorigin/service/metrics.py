"""Prometheus metrics at ``/metrics``, in a registry of the service's own (several apps may share a process).

Counted as requests are answered: requests by outcome, attributions by model, verdict and stop reason (the
early-exit reasons), latency. Read from the workers at each scrape: queue depth, jobs in flight, slot
occupancy, loop steps (a counter: ``rate(genorigin_loop_steps_total[1m])`` is steps per second; the gauge
``genorigin_loop_steps_per_second`` is the rate since the previous scrape), worker failures, readiness.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.live import Job
from genorigin.service.batching import ModelWorker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _WorkerCollector(Collector):
    """Gauges read off the workers when Prometheus scrapes (nothing to keep in step)."""

    def __init__(self, workers: Mapping[str, ModelWorker], ready: Callable[[], bool]) -> None:
        self.workers = workers
        self.ready = ready
        self._last: dict[str, tuple[float, int, float]] = {}  # model → (time, steps, rate) at the last scrape
        self._lock = threading.Lock()

    def _rate(self, name: str, steps: int) -> float:
        now = time.monotonic()
        with self._lock:
            t, s, rate = self._last.get(name, (now, steps, 0.0))
            if now - t >= 1.0:
                rate = (steps - s) / (now - t)
                self._last[name] = (now, steps, rate)
            elif name not in self._last:
                self._last[name] = (now, steps, 0.0)
            return rate

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "queue_depth": ("jobs waiting for a slot", lambda w: len(w.queue)),
            "jobs_in_flight": ("admitted jobs not yet answered (reading, queued, running)", lambda w: w.reserved),
            "jobs_capacity": ("the admission bound: batch size + queue", lambda w: w.capacity),
            "images_in_batch": ("images in the running inversion", lambda w: w.images_in_flight),
            "slots_in_use": ("optimiser slots in use (images × starts)", lambda w: w.slots_in_use),
            "slots_capacity": ("optimiser slots of a full batch", lambda w: w.slot_capacity),
            "worker_healthy": ("1 unless the last inversion failed and nothing succeeded since", lambda w: w.healthy),
        }
        for key, (doc, read) in gauges.items():
            g = GaugeMetricFamily(f"genorigin_{key}", doc, labels=["model"])
            for name, w in self.workers.items():
                g.add_metric([name], float(read(w)))
            yield g
        steps = CounterMetricFamily("genorigin_loop_steps", "inversion loop steps run", labels=["model"])
        rate = GaugeMetricFamily("genorigin_loop_steps_per_second", "loop steps per second since the last scrape",
                                 labels=["model"])  # fmt: skip
        failures = CounterMetricFamily("genorigin_worker_failures", "inversions that raised", labels=["model"])
        for name, w in self.workers.items():
            s = w.loop_step
            steps.add_metric([name], s)
            rate.add_metric([name], self._rate(name, s))
            failures.add_metric([name], w.failures)
        yield from (steps, rate, failures)
        yield GaugeMetricFamily("genorigin_ready", "1 when /readyz answers 200", value=float(self.ready()))


class ServiceMetrics:
    """The service's metrics; ``render()`` is the ``/metrics`` body."""

    def __init__(self, workers: Mapping[str, ModelWorker], ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("genorigin_requests", "HTTP requests answered, by route, status and outcome",
                                ["route", "status", "outcome"], registry=self.registry)  # fmt: skip
        self.attributions = Counter("genorigin_attributions", "images answered per model, by verdict and stop "
                                    "reason (belonging / non-belonging early exits, budget, cancelled)",
                                    ["model", "verdict", "stop_reason"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("genorigin_request_seconds", "time from request headers to answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.protocol_requests = Counter(
            "genorigin_protocol_requests",
            "HTTP requests answered, by API (v1: genorigin's own; v2: the Open Inference Protocol; other: probes, "
            "metrics, docs) and status",
            ["protocol", "status"],
            registry=self.registry,
        )
        self.queue_wait = Histogram("genorigin_queue_wait_seconds", "time a job waited for a slot", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.registry.register(_WorkerCollector(workers, ready))

    def job_done(self, model: str, job: Job, result: AttributionResult | None) -> None:
        """Called by the worker as each job is answered (its thread)."""
        if job.started:
            self.queue_wait.labels(model).observe(max(0.0, job.started - job.enqueued))
        if job.error is not None:
            verdict, reason = "error", "error"
        elif result is None:
            verdict, reason = "none", "dropped"  # never started: deadline or client gone while queued
        elif result.stop_reason == "cancelled":
            verdict, reason = "none", "cancelled"
        else:
            verdict, reason = result.verdict, result.stop_reason
        self.attributions.labels(model, verdict, reason).inc()

    def request(self, route: str, status: int, outcome: str, seconds: float) -> None:
        self.requests.labels(route, str(status), outcome).inc()
        self.latency.labels(route).observe(seconds)

    def protocol_request(self, protocol: str, status: int) -> None:
        self.protocol_requests.labels(protocol, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
