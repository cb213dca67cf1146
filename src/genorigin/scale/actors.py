"""The Ray Data actor: one method built once, every batch fed to one continuous-batching loop.

``AttributionActor`` is the callable class ``map_batches`` runs in a pool of actors. Its constructor resolves
the model and builds the method exactly as ``genorigin attribute`` does (``workflow.method_for_attribution``:
the calibration's settings, its encoder, its level), once per actor, never per batch. With the shared
inversion loop it then starts the loop's live worker (``runtime.loop.live.LiveWorker``, which the HTTP service
runs too): one thread running ``Attributor.stream`` over a live queue. Each batch reads its files (one open per
file: content hash, then decode), queues its images and yields each row the moment its image leaves the loop.
Ray runs two batches per actor at once (``CALLS_PER_ACTOR``), so the next batch's images join the loop at its
checkpoints while the last ones of the batch before finish: the loop never drains between batches. Results are
batch-independent (runtime/loop/inversion.py), so every row equals what ``genorigin attribute`` gives the image.

A batch yields columns ``source``, ``status`` (``ok``, ``unreadable``, ``failed``, ``skipped``) and ``row``
(the result row as JSON text; empty for ``skipped``: the file's content hash and path are already in the
output). Nothing here raises for one image: an unreadable file is an error row, a failed inversion a
``failed`` row the driver reports and does not write (a re-run retries it).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from genorigin import workflow
from genorigin.decode import Background
from genorigin.images import HashedRead, read_image_hashed
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.live import Job, LiveWorker
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.registry import resolve_method
from genorigin.scale.output import error_row, result_row, to_line, token
from genorigin.threads import use_threads

OK, UNREADABLE, FAILED, SKIPPED = "ok", "unreadable", "failed", "skipped"
CALLS_PER_ACTOR = 2  # batches in flight in one actor: the next one's images wait in the loop's queue
QUEUE_BOUND = 1 << 20  # the worker's admission bound; Ray's calls per actor are the real one


@dataclass(frozen=True)
class JobSpec:
    """What every actor needs to build the method as the driver did (picklable; paths absolute)."""

    model: str
    choice: workflow.MethodChoice
    calibration: str
    alpha: float | None = None
    early_exit: bool = True
    ddim_steps: int = 50
    convert: Background | None = None
    threads: int = 1


@dataclass
class Read:
    """One entry of a batch after reading: its row if already decided, else its image and facts."""

    source: str
    hashed: HashedRead
    row: tuple[str, str] | None = None  # (status, JSON row) when no inversion is needed


class Roster:
    """A named actor the pool's actors report to once their method is built: how many actor starts a job saw,
    when each was ready (wall clock), and their handles (for an operator, or a test that kills one)."""

    def __init__(self) -> None:
        self.members: list[tuple[Any, int, str, float]] = []

    def joined(self, handle: Any, pid: int, node: str, ready_at: float) -> None:
        self.members.append((handle, pid, node, ready_at))

    def list(self) -> list[tuple[Any, int, str, float]]:
        return list(self.members)


class AttributionActor:
    """``map_batches`` callable class: ``__init__`` builds the method, ``__call__`` attributes one batch."""

    def __init__(self, job: JobSpec, roster: str | None = None) -> None:
        threads = use_threads(job.threads)
        model = workflow.resolve(job.model, job.ddim_steps, threads)
        loaded = workflow.method_for_attribution(model, replace(job.choice, threads=threads),
                                                 calibration=Path(job.calibration), alpha=job.alpha,
                                                 early_exit=job.early_exit)  # fmt: skip
        self.job = job
        self.method = loaded.method
        self.worker: LiveWorker | None = None
        spec, _ = resolve_method(self.method.method)
        if spec.inverts:  # the registry: an inverting method is built on the shared loop (runtime/methods/registry.py)
            loop = cast(Attributor, self.method)
            self.worker = LiveWorker(loop, model.generator.name, max_queue=QUEUE_BOUND)
            self.worker.start()
        if roster is not None:
            import ray

            context = ray.get_runtime_context()
            ray.get_actor(roster).joined.remote(context.current_actor, os.getpid(), context.get_node_id(),
                                               time.time())  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, list[str]]]:
        reads = [self._read(str(s), str(p), str(d)) for s, p, d in zip(batch["source"], batch["path"], batch["done"])]
        decided = [(r.source, *r.row) for r in reads if r.row is not None]
        if decided:
            yield _columns(decided)
        todo = [r for r in reads if r.row is None]
        if todo:
            attribute = self._stream if self.worker is not None else self._whole
            yield from attribute(todo)

    def _read(self, source: str, path: str, done: str) -> Read:
        try:
            hashed = read_image_hashed(path, self.method.generator, name=source, convert=self.job.convert)
        except Exception as exc:  # a bug, not the file: reported, not written, retried by a re-run
            line = to_line(error_row(source, None, f"{source}: {_failure(exc)}"))
            return Read(source, HashedRead(None), (FAILED, line))
        if token(hashed.sha256) in done.split():
            return Read(source, hashed, (SKIPPED, ""))
        if hashed.error is not None:
            return Read(source, hashed, (UNREADABLE, to_line(error_row(source, hashed.sha256, str(hashed.error)))))
        return Read(source, hashed)

    def _stream(self, reads: Sequence[Read]) -> Iterator[dict[str, list[str]]]:
        """Queue every image on the actor's loop; yield rows as images leave it."""
        assert self.worker is not None
        jobs = [self.worker.job(r.source, r.hashed.image, math.inf) for r in reads]  # type: ignore[arg-type]
        if not self.worker.try_reserve(len(jobs)):
            raise RuntimeError("the actor's queue is full")  # QUEUE_BOUND ≫ CALLS_PER_ACTOR × batch size
        self.worker.submit(jobs)
        pending: dict[Future, tuple[Job, Read]] = {j.future: (j, r) for j, r in zip(jobs, reads)}
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            rows = []
            for f in finished:
                job, read = pending.pop(f)
                result = f.result()
                if result is None:
                    rows.append((read.source, FAILED, to_line(error_row(read.source, read.hashed.sha256,
                                                                        f"{read.source}: inversion failed: "
                                                                        f"{job.error}"))))  # fmt: skip
                else:
                    rows.append(_decided(read, result))
            yield _columns(rows)

    def _whole(self, reads: Sequence[Read]) -> Iterator[dict[str, list[str]]]:
        """A method without the shared loop (AEDR): the batch in one ``attribute`` call."""
        try:
            images = np.stack([r.hashed.image for r in reads])  # type: ignore[misc]
            results = self.method.attribute(images, [r.source for r in reads])
        except Exception as exc:
            yield _columns([(r.source, FAILED, to_line(error_row(r.source, r.hashed.sha256,
                                                                 f"{r.source}: {_failure(exc)}")))
                            for r in reads])  # fmt: skip
            return
        yield _columns([_decided(r, res) for r, res in zip(reads, results)])


def _decided(read: Read, result: AttributionResult) -> tuple[str, str, str]:
    assert read.hashed.facts is not None and read.hashed.sha256 is not None
    result.input = read.hashed.facts.to_dict()
    return read.source, OK, to_line(result_row(result, read.hashed.sha256))


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _columns(rows: Sequence[tuple[str, str, str]]) -> dict[str, list[str]]:
    return {"source": [r[0] for r in rows], "status": [r[1] for r in rows], "row": [r[2] for r in rows]}
