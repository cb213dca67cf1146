"""The path of an attribution request, whatever protocol carried it (``/v1/attribute`` or the Open Inference
Protocol's ``/v2/models/{name}/infer``): admit, read, decode, queue, wait (deadline, client gone), answer.

Order matters for cost: token, draining and model are checked from the headers; one job per target model is
reserved before the body is read (an overloaded service answers ``503`` without buffering anything); the body
is read within its limits and parsed by the protocol into uploads; uploads are decoded off the event loop; the
jobs join the live queue; the handler waits for their answers until the deadline, then asks the loop to cancel
them and reports what was known. A client that hangs up has its jobs dropped from the queue or cancelled at
the loop's next checkpoint. ``handled`` wraps a protocol's handler: every outcome is one answer (or none, for
a client that left), counted in the metrics under the route's name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from genorigin.facts import ImageFacts
from genorigin.images import ImageError, decode_upload, prepare_pixels
from genorigin.outputs import strict_json
from genorigin.runtime.loop.live import Job
from genorigin.service.admission import Reservation, check_token, parse_deadline_ms
from genorigin.service.batching import ModelWorker
from genorigin.service.core import Service
from genorigin.service.errors import ServiceError, error_payload
from genorigin.service.responses import ModelAnswer, model_answer
from genorigin.service.uploads import Body, ClientGone, Receive, Upload

log = logging.getLogger("genorigin.service")
IMAGE_ERROR_CODES = {400: "unreadable_image", 413: "too_large", 415: "unsupported_image"}


@dataclass
class Prepared:
    """One upload: its jobs and facts per model, or the error its decoding gave; then its answers."""

    upload: Upload
    jobs: dict[str, Job] = field(default_factory=dict)
    facts: dict[str, ImageFacts] = field(default_factory=dict)
    error: ModelAnswer | None = None
    answers: dict[str, ModelAnswer] = field(default_factory=dict)


@dataclass(frozen=True)
class Admitted:
    """What a request was admitted for: the target models' workers and its deadline (time.monotonic())."""

    workers: dict[str, ModelWorker]
    deadline: float


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(strict_json(body), status, headers=headers, media_type="application/json")


def admit(service: Service, request: Request, model: str | None, t0: float) -> Admitted:
    """Token, draining, the target models and the deadline (``X-Deadline-Ms`` or ``?deadline_ms``), from the
    headers alone."""
    check_token(request.headers.get("authorization"), service.limits.token)
    if service.draining:
        raise ServiceError("draining", "the service is shutting down: retry on another instance",
                           headers={"Retry-After": "1", "Connection": "close"})  # fmt: skip
    workers = service.targets(model)
    deadline_ms = parse_deadline_ms(request.headers.get("x-deadline-ms"), request.query_params.get("deadline_ms"),
                                    service.limits.deadline_ms)  # fmt: skip
    return Admitted(workers, t0 + deadline_ms / 1000.0)


def _decode(up: Upload, worker: ModelWorker) -> tuple[np.ndarray, ImageFacts]:
    generator = worker.served.attributor.generator
    if up.pixels is not None:
        return prepare_pixels(up.pixels, up.name, generator)
    return decode_upload(up.data, up.name, generator)


def _prepare(uploads: list[Upload], workers: dict[str, ModelWorker], deadline: float) -> list[Prepared]:
    """Decode each upload for each model (the pixel limit and decode gate of ``genorigin.images``) into jobs."""
    out = []
    for up in uploads:
        p = Prepared(up)
        try:
            for name, w in workers.items():
                image, p.facts[name] = _decode(up, w)
                p.jobs[name] = w.job(up.name, image, deadline)
        except ImageError as exc:
            status = exc.http_status
            code = IMAGE_ERROR_CODES.get(status, "unreadable_image")
            p.error = ModelAnswer(status, error_payload(status, code, str(exc), {"source": up.name, "kind": exc.kind}))
            p.jobs.clear()
        out.append(p)
    return out


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _wait(futures: set[asyncio.Future], gone: asyncio.Future, until: float) -> set[asyncio.Future]:
    """Wait for every future until ``until`` (monotonic); the ones still pending. ClientGone if the client left."""
    pending = set(futures)
    while pending:
        timeout = until - time.monotonic()
        if timeout <= 0:
            break
        done, _ = await asyncio.wait(pending | {gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if gone in done:
            raise ClientGone()
        pending -= done
    return pending


async def _answer(service: Service, prepared: list[Prepared], receive: Receive, deadline: float) -> None:
    """Fill each upload's answers per model, once the jobs finished or the deadline (plus the cancel grace)
    passed."""
    owner = {id(job): (name, job) for p in prepared for name, job in p.jobs.items()}
    futures = {asyncio.wrap_future(job.future): job for p in prepared for job in p.jobs.values()}
    gone = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        pending = await _wait(set(futures), gone, deadline)
        for f in pending:  # the deadline: out of the queue now, or cancelled at the loop's next checkpoint
            name, job = owner[id(futures[f])]
            service.workers[name].drop(job)
        if pending:
            pending = await _wait(pending, gone, time.monotonic() + service.limits.cancel_grace_s)
    except ClientGone:
        for name, job in owner.values():
            service.workers[name].drop(job, abandoned=True)
        raise
    finally:
        gone.cancel()
    unanswered = {id(futures[f]) for f in pending}
    for job_id in unanswered:  # the loop did not report in time: make sure it lets go
        owner[job_id][1].abandoned = True
    for p in prepared:
        for name, job in p.jobs.items():
            result = None if id(job) in unanswered else job.future.result()
            calibration = service.workers[name].served.attributor.calibration
            p.answers[name] = model_answer(name, job, result, p.facts[name], calibration, id(job) not in unanswered)


async def run_uploads(service: Service, admitted: Admitted, body: Body, receive: Receive,
                      parse: Callable[[bytes], Awaitable[list[Upload]]]) -> list[Prepared]:  # fmt: skip
    """Reserve, read the body, ``parse`` it into uploads, decode, queue and wait: every upload with its answers
    per model (or its decoding error), in order."""
    workers = admitted.workers
    reservation = Reservation(workers)
    reservation.grow(1)
    try:
        uploads = await parse(await body.read())
        if len(uploads) > 1:
            reservation.grow(len(uploads) - 1)
        prepared = await run_in_threadpool(_prepare, uploads, workers, admitted.deadline)
        for name, w in workers.items():
            jobs = [p.jobs[name] for p in prepared if p.error is None]
            reservation.handed_over(name, len(jobs))
            w.submit(jobs)
        await _answer(service, [p for p in prepared if p.error is None], receive, admitted.deadline)
    finally:
        reservation.release()
    return prepared


@dataclass
class Handled:
    """What a protocol's handler answered: the response, its status and the outcome the metrics count."""

    response: Response
    status: int
    outcome: str


ErrorRenderer = Callable[[ServiceError, dict[str, str]], Response]


async def handled(service: Service, request: Request, route: str, render_error: ErrorRenderer,
                  run: Callable[[Body, float], Awaitable[Handled]]) -> Response:  # fmt: skip
    """Run a protocol's attribution handler: refusals rendered in the protocol's error shape (after draining
    the body, so the client reads them), a client that left answered with nothing, a bug answered 500; each
    request counted under ``route``."""
    t0 = request.scope.get("state", {}).get("t0") or time.monotonic()
    body = Body(request.receive, request.headers, service.limits)
    service.in_flight += 1
    try:
        done = await run(body, t0)
    except ServiceError as exc:
        headers = dict(exc.headers)
        if "Connection" not in headers and not await body.drain():
            headers["Connection"] = "close"  # the rest of the body could not be read: do not reuse the connection
        done = Handled(render_error(exc, headers), exc.status, exc.code)
    except ClientGone:
        done = Handled(Response(status_code=499), 499, "client_gone")  # nobody reads it: uvicorn drops it
    except Exception as exc:  # a bug, not the client's fault: logged with its traceback, answered in the shape
        log.exception("%s failed", route)
        error = ServiceError("internal", f"{type(exc).__name__}: {exc}", headers={"Connection": "close"})
        done = Handled(render_error(error, error.headers), 500, "internal")
    finally:
        service.in_flight -= 1
    if service.draining:
        done.response.headers["Connection"] = "close"
    request.scope.setdefault("state", {})["outcome"] = done.outcome
    service.metrics.request(route, done.status, done.outcome, time.monotonic() - t0)
    return done.response
