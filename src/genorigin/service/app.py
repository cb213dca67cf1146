"""The ASGI app: routes, the JSON error shape for every refusal, the access log, OpenAPI at ``/docs``.

Routes: ``POST /v1/attribute`` (raw image body or ``multipart/form-data``; ``?model=NAME``, ``model=all`` or
none for the decision across models; deadline ``X-Deadline-Ms`` or ``?deadline_ms``), ``GET /v1/models``,
``GET /healthz`` (alive), ``GET /readyz`` (ready), ``GET /metrics`` (Prometheus), and the Open Inference
Protocol under ``/v2`` (``v2_api``). ``/v1/*``, ``/v2`` metadata and inference, and ``/metrics`` need the
bearer token when one is configured. A wrong method gets ``405`` with ``Allow``. Errors under ``/v2`` take the
protocol's shape (``{"error": "<message>"}``), every other one the service's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genorigin import __version__
from genorigin.service.admission import check_token
from genorigin.service.attribute import attribute
from genorigin.service.core import Service
from genorigin.service.errors import ServiceError, code_for_status
from genorigin.service.flow import json_response
from genorigin.service.metrics import CONTENT_TYPE, ServiceMetrics
from genorigin.service.v2_api import add_v2_routes, v2_error

access_log = logging.getLogger("genorigin.access")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
ATTRIBUTE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (PNG, JPEG or WebP), or several as multipart/form-data file parts.",
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "image/webp": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        },
    },
    "parameters": [
        {"name": "model", "in": "query", "schema": {"type": "string"},
         "description": "a served model's name; none or 'all': which of the served models made the image, or none"},
        {"name": "deadline_ms", "in": "query", "schema": {"type": "number"},
         "description": "answer 504 with the best score so far past this many ms (header X-Deadline-Ms too)"},
        {"name": "name", "in": "query", "schema": {"type": "string"},
         "description": "the raw upload's name in the answer (header X-Image-Name too)"},
    ],
}  # fmt: skip
ERRORS = {s: {"description": d} for s, d in ((400, "bad request or unreadable image"), (401, "token needed"),
          (404, "unknown model"), (408, "body too slow"), (413, "body or image too large"),
          (415, "unsupported image"), (503, "overloaded or draining: see Retry-After"),
          (504, "deadline passed: best score so far in details"))}  # fmt: skip


def protocol_of(path: str) -> str:
    """Which API a path belongs to: ``v1``, ``v2`` (the Open Inference Protocol), or ``other`` (probes, docs)."""
    return next((p for p in ("v1", "v2") if path == f"/{p}" or path.startswith(f"/{p}/")), "other")


class AccessLog:
    """Pure ASGI middleware: one log line per request (status, time, outcome), counted per protocol; stamps
    the arrival time."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        state = scope.setdefault("state", {})
        state["t0"] = t0
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = "{}:{}".format(*scope["client"]) if scope.get("client") else "-"
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query}" if query else "")
            access_log.info('%s "%s %s" %d %.1fms %s', client, scope["method"], target, status or 500,
                            1000 * (time.monotonic() - t0), state.get("outcome", "-"))  # fmt: skip
            self.metrics.protocol_request(protocol_of(scope["path"]), status or 500)


def _error(request: Request, exc: ServiceError) -> Response:
    """A refusal in the shape of the API the path belongs to."""
    if protocol_of(request.url.path) == "v2":
        return v2_error(exc)
    return json_response(exc.status, exc.payload(), exc.headers)


def create_app(service: Service, *, manage_lifecycle: bool = True) -> FastAPI:
    """The app over ``service``; with ``manage_lifecycle`` its lifespan starts and closes the workers."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                service.close(timeout=service.limits.drain_timeout_s)

    app = FastAPI(
        title="genorigin",
        version=__version__,
        lifespan=lifespan,
        description="Was this image generated by one of these models? (origin attribution by inversion)",
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return _error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        error = ServiceError(code_for_status(status), str(exc.detail), status=status, headers=dict(exc.headers or {}))
        return _error(request, error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:  # logged with its traceback by Starlette
        return _error(request, ServiceError("internal", f"{type(exc).__name__}: {exc}"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(request, ServiceError("bad_request", str(exc.errors())))

    @app.post("/v1/attribute", openapi_extra=ATTRIBUTE_BODY, responses=ERRORS,
              summary="Which served model made this image, or none")  # fmt: skip
    async def attribute_route(request: Request) -> Response:
        return await attribute(service, request)

    @app.get("/v1/models", summary="The served models, their settings and calibrations")
    async def models(request: Request) -> Response:
        check_token(request.headers.get("authorization"), service.limits.token)
        return json_response(200, service.models_info())

    @app.get("/healthz", summary="Alive: every model's worker thread is running")
    async def healthz() -> Response:
        alive = service.alive()
        return json_response(200 if alive else 503, {"status": "ok" if alive else "worker stopped"})

    @app.get("/readyz", summary="Ready: models loaded, calibrations checked, warm-up answered, not draining")
    async def readyz() -> Response:
        r = service.readiness()
        return json_response(200 if r["ready"] else 503, r)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        check_token(request.headers.get("authorization"), service.limits.token)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    add_v2_routes(app, service)
    app.add_middleware(AccessLog, metrics=service.metrics)
    return app
