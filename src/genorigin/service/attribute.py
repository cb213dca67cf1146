"""``POST /v1/attribute``: the raw image body or ``multipart/form-data`` file parts through the shared request
path (``flow``), answered in genorigin's own JSON (``responses``).

One model asked for (``?model=NAME``): its answer; none or ``model=all``: the decision across the served
models. Several files (multipart): one entry per file part, in order.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from genorigin.service.core import ALL, Service
from genorigin.service.errors import ServiceError
from genorigin.service.flow import Handled, Prepared, admit, handled, json_response, run_uploads
from genorigin.service.responses import ModelAnswer, cross_answer, several_files
from genorigin.service.uploads import Body, Upload, is_multipart, split_uploads

ROUTE = "/v1/attribute"


def _one(p: Prepared, model: str | None) -> ModelAnswer:
    """One model asked for: its answer; every model: the decision across them."""
    if p.error is not None:
        return p.error
    return p.answers[model] if model is not None and model != ALL else cross_answer(p.upload.name, p.answers)


def _outcome(answer: ModelAnswer) -> str:
    if answer.status == 200:
        verdict = answer.body.get("verdict")
        return str(verdict) if verdict else "ok"
    return str(answer.body.get("error", {}).get("code", "error"))


def render_error(exc: ServiceError, headers: dict[str, str]) -> Response:
    """The service's own error shape: ``{"error": {"status", "code", "message", "details"}}``."""
    return json_response(exc.status, exc.payload(), headers)


async def attribute(service: Service, request: Request) -> Response:
    """The route: every outcome is one JSON answer (or none, for a client that left), counted in the metrics."""
    model = request.query_params.get("model")

    async def parse(data: bytes) -> list[Upload]:
        return await split_uploads(data, request.headers, request.query_params.get("name"), service.limits)

    async def run(body: Body, t0: float) -> Handled:
        admitted = admit(service, request, model, t0)
        prepared = await run_uploads(service, admitted, body, request.receive, parse)
        per_upload = [(p.upload.name, _one(p, model)) for p in prepared]
        if len(per_upload) == 1 and not is_multipart(request.headers):
            answer = per_upload[0][1]
        else:
            answer = several_files(per_upload)
        return Handled(json_response(answer.status, answer.body), answer.status, _outcome(answer))

    return await handled(service, request, ROUTE, render_error, run)
