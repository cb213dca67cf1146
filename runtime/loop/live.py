"""The loop's live queue and the thread that feeds a method's ``stream`` from it (the service, the Ray actors).

Continuous (iteration-level) batching: the loop takes new jobs at every checkpoint where slots are free, and
each job leaves at its own early exit (the loop's batch-independence keeps every verdict identical to a lone
run). A job whose deadline passed or whose client went away is dropped from the queue, or, once running,
reported cancelled by ``Job.cancelled`` at the loop's next checkpoint, which frees its slots.

``mode="complete"`` keeps the old worker for comparison: it gathers up to ``batch_size`` jobs (waiting at most
``max_wait_ms`` for company), runs them to completion, and answers them all when the batch ends.

The queue is bounded at the door: ``try_reserve`` admits a request only while jobs in flight (being read,
queued or in the loop) stay within ``capacity`` = batch size + ``max_queue``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from genorigin.runtime.loop.inversion import InversionLoop
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.loop.work import ListSource, WorkItem, WorkSource

log = logging.getLogger(__name__)  # the service and the Ray actors alike
BatchingMode = Literal["continuous", "complete"]


class Answer(Protocol):
    """A method's result for one item: ``error`` says why no decision could be made (``AttributionResult``)."""

    error: str | None


class Streams(Protocol):
    """What the worker needs of a method: its schedule and settings, ``work_item`` and ``stream``
    (``runtime.methods.attribution.Attributor``)."""

    schedule: Schedule
    settings: InversionSettings

    def work_item(self, key: Any, image: np.ndarray, cancelled: Callable[[], bool] | None = None) -> WorkItem: ...

    def stream(
        self,
        source: WorkSource,
        on_result: Callable[[WorkItem, Any], None],
        on_start: Callable[[InversionLoop], None] | None = None,
    ) -> None: ...


@dataclass(eq=False)
class Job:
    """One image for one model, from admission to answer; ``future`` resolves when it is answered."""

    name: str  # the upload's name: the result's ``source``
    deadline: float  # time.monotonic() past which the job is cancelled
    item: WorkItem | None = None
    state: Literal["new", "queued", "running", "done"] = "new"
    abandoned: bool = False  # the client went away
    enqueued: float = 0.0
    started: float = 0.0
    admitted_step: int = -1  # the worker's loop step when the job joined the batch
    finished_step: int = -1
    answered: float = 0.0
    error: str | None = None  # the worker failed on this job
    internal: bool = False  # the warm-up's job: not counted in the metrics
    future: Future[Answer | None] = field(default_factory=Future)

    def __str__(self) -> str:
        return self.name

    def cancelled(self) -> bool:
        """Asked by the loop at each checkpoint: give this job's slots back?"""
        return self.abandoned or time.monotonic() >= self.deadline


class LiveQueue:
    """The loop's ``WorkSource``: jobs in arrival order; ``take`` skips (and answers) dropped ones."""

    def __init__(self, on_taken: Callable[[Job], None], on_dropped: Callable[[Job], None]) -> None:
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_taken = on_taken
        self._on_dropped = on_dropped

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, jobs: list[Job]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the worker is closed")
            for job in jobs:
                job.state, job.enqueued = "queued", time.monotonic()
            self._jobs.extend(jobs)
            self._cond.notify_all()

    def remove(self, job: Job) -> bool:
        """Take a still-queued job out (deadline, client gone); False if the loop has it already."""
        with self._cond:
            if job.state != "queued":
                return False
            self._jobs.remove(job)
            job.state = "done"
        self._on_dropped(job)
        return True

    def take(self, limit: int, wait: bool) -> list[WorkItem]:
        """Up to ``limit`` live jobs; ``wait``: block until one arrives or the queue is closed."""
        out: list[WorkItem] = []
        dropped: list[Job] = []
        with self._cond:
            while True:
                while self._jobs and len(out) < limit:
                    job = self._jobs.popleft()
                    if job.cancelled():
                        job.state = "done"
                        dropped.append(job)
                        continue
                    job.state, job.started = "running", time.monotonic()
                    self._on_taken(job)
                    assert job.item is not None
                    out.append(job.item)
                if out or not wait or self._closed:
                    break
                self._cond.wait(timeout=0.5)  # wakes on put/close; the timeout bounds a missed wake-up
        for job in dropped:
            self._on_dropped(job)
        return out

    def wait_for_more(self, seconds: float) -> None:
        """Block until a job arrives, the queue closes, or ``seconds`` pass (the old worker's batch wait)."""
        with self._cond:
            if not self._jobs and not self._closed:
                self._cond.wait(timeout=seconds)

    def finished(self) -> bool:
        with self._cond:
            return self._closed and not self._jobs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LiveWorker:
    """The thread that owns one method's loop, with its live queue and admission count."""

    def __init__(self, method: Streams, name: str, *, max_queue: int, mode: BatchingMode = "continuous",
                 max_wait_ms: float = 5.0,
                 on_done: Callable[[Job, Answer | None], None] | None = None) -> None:  # fmt: skip
        if max_queue < 0:
            raise ValueError("max_queue must be ≥ 0")
        if mode not in ("continuous", "complete"):
            raise ValueError(f"batching mode must be 'continuous' or 'complete', got {mode!r}")
        self.method = method
        self.name = name
        self.mode: BatchingMode = mode
        self.batch_size = method.schedule.batch_size
        self.capacity = self.batch_size + max_queue
        self.max_wait = max_wait_ms / 1000.0
        self.on_done = on_done
        self.queue = LiveQueue(self._taken, lambda job: self._answer(job, None))
        self.reserved = 0  # admitted jobs not yet answered (reading, queued or running)
        self.running: set[Job] = set()
        self.failures = 0
        self.healthy = True  # False from a failed run until a job is answered again
        self.completed = 0
        self.mean_run_s = 1.0  # moving average of the time a job spends in the loop (for Retry-After)
        self._loop: InversionLoop | None = None
        self._step_base = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"genorigin-{name}", daemon=True)

    # ------------------------------------------------------------------------------------------ producer side
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def try_reserve(self, n: int, *, bounded: bool = True) -> bool:
        """Admit ``n`` more jobs if the bound allows; each is released when answered (``release``).
        ``bounded=False``: count them whatever the bound (the service's own warm-up job, never refused)."""
        with self._lock:
            if bounded and self.reserved + n > self.capacity:
                return False
            self.reserved += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.reserved -= n

    def job(self, name: str, image: np.ndarray, deadline: float) -> Job:
        """A job for a prepared image (validated, complexity computed: call it off the event loop)."""
        job = Job(name, deadline)
        job.item = self.method.work_item(job, image, job.cancelled)
        return job

    def submit(self, jobs: list[Job]) -> None:
        """Queue reserved jobs; each releases its reservation when answered."""
        for job in jobs:
            job.future.add_done_callback(lambda _: self.release(1))
        self.queue.put(jobs)

    def drop(self, job: Job, abandoned: bool = False) -> bool:
        """Deadline passed or client gone: out of the queue now, or freed by the loop at its next checkpoint."""
        job.abandoned = job.abandoned or abandoned
        return self.queue.remove(job)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; the thread ends once the ones already queued or running are answered."""
        self.queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ stats
    @property
    def loop_step(self) -> int:
        """Steps run by this worker's loops so far (monotonic across batches and restarts)."""
        loop = self._loop
        return self._step_base + (loop.step if loop is not None else 0)

    @property
    def images_in_flight(self) -> int:
        loop = self._loop
        return len(loop.images) if loop is not None else 0

    @property
    def slots_in_use(self) -> int:
        loop = self._loop
        return len(loop.pool) if loop is not None else 0

    def queue_seconds_estimate(self) -> float:
        """How long a job queued now would wait for a slot, roughly: batches ahead of it × a job's run time."""
        return (len(self.queue) / self.batch_size + 1.0) * self.mean_run_s

    @property
    def slot_capacity(self) -> int:
        return self.batch_size * self.method.settings.restarts

    # ------------------------------------------------------------------------------------------ loop side
    def _started(self, loop: InversionLoop) -> None:
        if self._loop is not None:
            self._step_base += self._loop.step
        self._loop = loop

    def _taken(self, job: Job) -> None:
        job.admitted_step = self.loop_step
        self.running.add(job)

    def _result(self, item: WorkItem, result: Answer) -> None:
        job: Job = item.key
        job.finished_step = self.loop_step
        self.running.discard(job)
        self.healthy = True
        self.mean_run_s = 0.9 * self.mean_run_s + 0.1 * (time.monotonic() - job.started)
        if result.error is not None:  # this image's failure is its own answer; the batch goes on
            job.error = result.error
            self._answer(job, None)
            return
        self._answer(job, result)

    def _answer(self, job: Job, result: Answer | None) -> None:
        job.state, job.answered = "done", time.monotonic()
        with self._lock:
            self.completed += 1
        if self.on_done is not None and not job.internal:
            self.on_done(job, result)
        if not job.future.done():
            job.future.set_result(result)

    def _run(self) -> None:
        while not self.queue.finished():
            try:
                if self.mode == "continuous":
                    self.method.stream(self.queue, self._result, self._started)
                else:
                    self._run_one_batch()
            except Exception as exc:  # the worker outlives a failed batch: its jobs get a 500, the next ones run
                self.failures += 1
                self.healthy = False
                log.exception("worker %s: inversion failed (%s jobs answered with an error)", self.name,
                              len(self.running))  # fmt: skip
                for job in list(self.running):
                    job.error = f"{type(exc).__name__}: {exc}"
                    self._answer(job, None)
                self.running.clear()
                time.sleep(min(1.0, 0.05 * self.failures))

    def _run_one_batch(self) -> None:
        """The old worker: gather a batch, run it to completion, answer everyone at the end."""
        items = self.queue.take(self.batch_size, wait=True)
        if not items:
            return
        end = time.monotonic() + self.max_wait
        while len(items) < self.batch_size and time.monotonic() < end:
            self.queue.wait_for_more(end - time.monotonic())
            items += self.queue.take(self.batch_size - len(items), wait=False)
        done: list[tuple[WorkItem, Answer]] = []
        self.method.stream(ListSource(items), lambda item, r: done.append((item, r)), self._started)
        for item, result in done:
            self._result(item, result)
