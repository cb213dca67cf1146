"""``POST /v1/attribute``: admit, read, decode, queue, wait (deadline, client gone), answer.

Order matters for cost: token, draining and model are checked from the headers; one job per target model is
reserved before the body is read (an overloaded service answers ``503`` without buffering anything); the body
is read within its limits; uploads are decoded off the event loop; the jobs join the live queue; the handler
waits for their answers until the deadline, then asks the loop to cancel them and reports what was known.
A client that hangs up has its jobs dropped from the queue or cancelled at the loop's next checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from genorigin.runtime.service.admission import Reservation, check_token, parse_deadline_ms
from genorigin.runtime.service.batching import Job, ModelWorker
from genorigin.runtime.service.core import ALL, Service
from genorigin.runtime.service.errors import ServiceError, error_payload
from genorigin.runtime.service.responses import ModelAnswer, cross_answer, model_answer, several_files, strict_json
from genorigin.runtime.service.uploads import Body, ClientGone, Receive, Upload, is_multipart, split_uploads
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from genorigin.facts import ImageFacts
from genorigin.images import ImageError, decode_upload

log = logging.getLogger("genorigin.service")
IMAGE_ERROR_CODES = {400: "unreadable_image", 413: "too_large", 415: "unsupported_image"}


@dataclass
class Prepared:
    """One upload: its jobs and facts per model, or the error its decoding gave."""

    upload: Upload
    jobs: dict[str, Job] = field(default_factory=dict)
    facts: dict[str, ImageFacts] = field(default_factory=dict)
    error: ModelAnswer | None = None


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(strict_json(body), status, headers=headers, media_type="application/json")


def _prepare(uploads: list[Upload], workers: dict[str, ModelWorker], deadline: float) -> list[Prepared]:
    """Decode each upload for each model (the pixel limit and decode gate of ``decode_upload``) into jobs."""
    out = []
    for up in uploads:
        p = Prepared(up)
        try:
            for name, w in workers.items():
                image, p.facts[name] = decode_upload(up.data, up.name, w.served.attributor.generator)
                p.jobs[name] = w.job(up.name, image, deadline)
        except ImageError as exc:
            status = exc.http_status
            p.error = ModelAnswer(
                status,
                error_payload(
                    status,
                    IMAGE_ERROR_CODES.get(status, "unreadable_image"),
                    str(exc),
                    {"source": up.name, "kind": exc.kind},
                ),
            )
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


async def _answers(service: Service, prepared: list[Prepared], receive: Receive, deadline: float,
                   ) -> dict[int, dict[str, ModelAnswer]]:  # fmt: skip
    """Each upload's answer per model, after the jobs finished or the deadline (plus the cancel grace) passed."""
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
    out: dict[int, dict[str, ModelAnswer]] = {}
    for i, p in enumerate(prepared):
        out[i] = {}
        for name, job in p.jobs.items():
            result = None if id(job) in unanswered else job.future.result()
            calibration = service.workers[name].served.attributor.calibration
            out[i][name] = model_answer(name, job, result, p.facts[name], calibration, id(job) not in unanswered)
    return out


async def _attribute(service: Service, request: Request, body: Body, t0: float) -> ModelAnswer:
    check_token(request.headers.get("authorization"), service.limits.token)
    if service.draining:
        raise ServiceError("draining", "the service is shutting down: retry on another instance",
                           headers={"Retry-After": "1", "Connection": "close"})  # fmt: skip
    model = request.query_params.get("model")
    workers = service.targets(model)
    deadline_ms = parse_deadline_ms(request.headers.get("x-deadline-ms"), request.query_params.get("deadline_ms"),
                                    service.limits.deadline_ms)  # fmt: skip
    deadline = t0 + deadline_ms / 1000.0
    reservation = Reservation(workers)
    reservation.grow(1)
    try:
        data = await body.read()
        uploads = await split_uploads(data, request.headers, request.query_params.get("name"), service.limits)
        del data
        if len(uploads) > 1:
            reservation.grow(len(uploads) - 1)
        prepared = await run_in_threadpool(_prepare, uploads, workers, deadline)
        for name, w in workers.items():
            jobs = [p.jobs[name] for p in prepared if p.error is None]
            reservation.handed_over(name, len(jobs))
            w.submit(jobs)
        answers = await _answers(service, [p for p in prepared if p.error is None], request.receive, deadline)
    finally:
        reservation.release()
    it = iter(answers.values())
    per_upload = [(p.upload.name, p.error or _one(next(it), model, p.upload.name)) for p in prepared]
    if len(per_upload) == 1 and not is_multipart(request.headers):
        return per_upload[0][1]
    return several_files(per_upload)


def _one(answers: dict[str, ModelAnswer], model: str | None, source: str) -> ModelAnswer:
    """One model asked for: its answer; every model: the decision across them."""
    return answers[model] if model is not None and model != ALL else cross_answer(source, answers)


async def attribute(service: Service, request: Request) -> Response:
    """The route: every outcome is one JSON answer (or none, for a client that left), counted in the metrics."""
    t0 = request.scope.get("state", {}).get("t0") or time.monotonic()
    body = Body(request.receive, request.headers, service.limits)
    service.in_flight += 1
    try:
        answer = await _attribute(service, request, body, t0)
        outcome = _outcome(answer)
        response = json_response(answer.status, answer.body)
    except ServiceError as exc:
        outcome, headers = exc.code, dict(exc.headers)
        if "Connection" not in headers and not await body.drain():
            headers["Connection"] = "close"  # the rest of the body could not be read: do not reuse the connection
        answer = ModelAnswer(exc.status, exc.payload())
        response = json_response(exc.status, exc.payload(), headers)
    except ClientGone:
        outcome, answer = "client_gone", ModelAnswer(499, {})
        response = Response(status_code=499)  # nobody reads it: uvicorn drops sends after a disconnect
    except Exception as exc:  # a bug, not the client's fault: logged with its traceback, answered in the JSON shape
        log.exception("POST /v1/attribute failed")
        outcome, answer = "internal", ModelAnswer(500, error_payload(500, "internal", f"{type(exc).__name__}: {exc}"))
        response = json_response(500, answer.body, {"Connection": "close"})
    finally:
        service.in_flight -= 1
    if service.draining:
        response.headers["Connection"] = "close"
    request.scope.setdefault("state", {})["outcome"] = outcome
    service.metrics.request("/v1/attribute", answer.status, outcome, time.monotonic() - t0)
    return response


def _outcome(answer: ModelAnswer) -> str:
    if answer.status == 200:
        verdict = answer.body.get("verdict")
        return str(verdict) if verdict else "ok"
    return str(answer.body.get("error", {}).get("code", "error"))
