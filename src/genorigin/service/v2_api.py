"""The Open Inference Protocol (KServe "v2" REST, as Triton speaks it) beside ``/v1``: the same models, admission,
deadlines and answers, for the clients, gateways and dashboards an inference platform already has.

Routes (each model route also under ``/versions/{version}``; every model has version ``1``):
``GET /v2`` (server metadata), ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2/models/{name}``
(model metadata), ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``. A served model answers
``verdict``, ``p_value``, ``score`` (the calibrated loss) and ``steps`` per image; the model named ``all`` (the
whole set) answers ``decision`` (the model that made the image, ``""`` for none: ``decide_across``),
``verdict``, ``ambiguous`` and each model's four outputs as ``<model>/<output>``. Errors are
``{"error": "<message>"}`` with the status ``/v1`` would give, ``Retry-After`` on ``503``. Requests go through
the same path as ``/v1/attribute`` (``flow``): a request reserves one job per image and model, its deadline is
``X-Deadline-Ms`` (or ``?deadline_ms``), and an image gets the same answer through either protocol.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from genorigin import __version__
from genorigin.runtime.decide.multimodel import decide_across
from genorigin.runtime.decide.result import AttributionResult
from genorigin.service.admission import check_token
from genorigin.service.core import ALL, Service
from genorigin.service.errors import ServiceError
from genorigin.service.flow import Handled, Prepared, admit, handled, json_response, run_uploads
from genorigin.service.uploads import Body, Upload
from genorigin.service.v2_codec import (
    HEADER_LENGTH,
    INPUTS,
    InferRequest,
    Tensor,
    TensorSpec,
    bad,
    encode_response,
    parse_request,
)

VERSIONS = ("1",)
INFER_ROUTE = "/v2/models/{model}/infer"
EXTENSIONS = ("binary_tensor_data",)  # Triton's name for the binary-data extension
MODEL_OUTPUTS = (("verdict", "BYTES"), ("p_value", "FP64"), ("score", "FP64"), ("steps", "INT32"))
CROSS_OUTPUTS = (("decision", "BYTES"), ("verdict", "BYTES"), ("ambiguous", "BOOL"))


def v2_error(exc: ServiceError, headers: dict[str, str] | None = None) -> Response:
    """The protocol's error shape, ``{"error": "<message>"}``, with the status and headers ``/v1`` would send."""
    return json_response(exc.status, {"error": exc.message}, exc.headers if headers is None else headers)


def output_specs(service: Service, model: str) -> list[TensorSpec]:
    """What ``model`` answers per image (``all``: the decision, then each served model's outputs)."""
    if model != ALL:
        return [TensorSpec(n, t, (-1,)) for n, t in MODEL_OUTPUTS]
    specs = [TensorSpec(n, t, (-1,)) for n, t in CROSS_OUTPUTS]
    return specs + [TensorSpec(f"{m}/{n}", t, (-1,)) for m in service.workers for n, t in MODEL_OUTPUTS]


def _model(service: Service, request: Request) -> str:
    """The path's model (``all``: the whole set) and version, checked: ``404`` for an unknown one."""
    name = request.path_params["name"]
    if name != ALL:
        service.targets(name)
    version = request.path_params.get("version")
    if version is not None and version not in VERSIONS:
        raise ServiceError("not_found", f"model {name!r} has no version {version!r} (versions: {', '.join(VERSIONS)})")
    return name


def _model_tensors(prefix: str, results: list[AttributionResult]) -> list[Tensor]:
    return [Tensor(f"{prefix}verdict", "BYTES", [r.verdict for r in results]),
            Tensor(f"{prefix}p_value", "FP64", [r.p_value for r in results]),
            Tensor(f"{prefix}score", "FP64", [r.calibrated_loss for r in results]),
            Tensor(f"{prefix}steps", "INT32", [r.steps for r in results])]  # fmt: skip


def _failure(prepared: list[Prepared]) -> ServiceError | None:
    """The first image that was not answered (unreadable, deadline, failure): one request, one answer."""
    for p in prepared:
        if p.error is not None:
            e = p.error.body["error"]
            return ServiceError(e["code"], e["message"], status=p.error.status)
        for model, answer in p.answers.items():
            if answer.status != 200:
                e, d = answer.body["error"], answer.body["error"]["details"]
                message = f"{p.upload.name}: {e['message']}"
                if e["code"] == "deadline_exceeded":
                    message += f"; {d.get('steps', 0)} steps done, best calibrated loss {d.get('best_calibrated_loss')}"
                return ServiceError(e["code"], message, status=answer.status, details={"model": model})
    return None


def _tensors(service: Service, model: str, prepared: list[Prepared]) -> list[Tensor]:
    results = {m: [p.answers[m].result for p in prepared] for m in (service.workers if model == ALL else [model])}
    if model != ALL:
        return _model_tensors("", results[model])  # type: ignore[arg-type]
    decisions = [decide_across({m: results[m][i] for m in results}) for i in range(len(prepared))]  # type: ignore[misc]
    out = [Tensor("decision", "BYTES", [d.model or "" for d in decisions]),
           Tensor("verdict", "BYTES", ["non-belonging" if d.model is None else "belonging" for d in decisions]),
           Tensor("ambiguous", "BOOL", [d.ambiguous for d in decisions])]  # fmt: skip
    for m, rs in results.items():
        out += _model_tensors(f"{m}/", rs)  # type: ignore[arg-type]
    return out


async def infer(service: Service, request: Request) -> Response:
    """``POST /v2/models/{name}[/versions/{v}]/infer``: every image answered, or one error for the request."""

    async def run(body: Body, t0: float) -> Handled:
        model = _model(service, request)
        admitted = admit(service, request, model, t0)
        parsed: list[InferRequest] = []

        async def parse(data: bytes) -> list[Upload]:
            if request.headers.get("content-encoding", "identity").lower() != "identity":
                raise ServiceError("unsupported_encoding", "compressed requests are not accepted: send the body as is")
            parsed.append(parse_request(data, request.headers.get(HEADER_LENGTH), service.limits.max_files))
            known = {s.name for s in output_specs(service, model)}
            unknown = sorted(set(parsed[0].outputs or ()) - known)
            if unknown:
                raise bad(f"model {model!r} has no output {', '.join(unknown)}; outputs: {', '.join(sorted(known))}")
            return parsed[0].images

        prepared = await run_uploads(service, admitted, body, request.receive, parse)
        failure = _failure(prepared)
        if failure is not None:
            raise failure
        payload, headers, media = encode_response(model, VERSIONS[0], parsed[0], _tensors(service, model, prepared))
        return Handled(Response(payload, 200, headers=headers, media_type=media), 200, "ok")

    return await handled(service, request, INFER_ROUTE, v2_error, run)


def _metadata(service: Service, model: str) -> dict[str, Any]:
    return {"name": model, "versions": list(VERSIONS), "platform": "genorigin",
            "inputs": [s.to_dict() for s in INPUTS],
            "outputs": [s.to_dict() for s in output_specs(service, model)]}  # fmt: skip


def _probe(reasons: list[str]) -> Response:
    return Response(status_code=200) if not reasons else json_response(503, {"error": "; ".join(reasons)})


def add_v2_routes(app: FastAPI, service: Service) -> None:
    """The protocol's routes on ``app``; metadata and inference need the bearer token when one is set, probes
    do not."""

    async def server_metadata(request: Request) -> Response:
        check_token(request.headers.get("authorization"), service.limits.token)
        return json_response(200, {"name": "genorigin", "version": __version__, "extensions": list(EXTENSIONS)})

    async def live() -> Response:
        return _probe([] if service.alive() else ["a model's worker stopped"])

    async def ready() -> Response:
        return _probe(service.readiness()["reasons"])

    async def model_metadata(request: Request) -> Response:
        check_token(request.headers.get("authorization"), service.limits.token)
        return json_response(200, _metadata(service, _model(service, request)))

    async def model_ready(request: Request) -> Response:
        model = _model(service, request)
        if model == ALL:
            return _probe(service.readiness()["reasons"])
        return _probe((["draining"] if service.draining else []) + service.model_reasons(model))

    async def infer_route(request: Request) -> Response:
        return await infer(service, request)

    app.add_api_route("/v2", server_metadata, methods=["GET"], summary="Open Inference Protocol: server metadata")
    app.add_api_route("/v2/health/live", live, methods=["GET"], summary="Open Inference Protocol: alive")
    app.add_api_route("/v2/health/ready", ready, methods=["GET"], summary="Open Inference Protocol: ready")
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(base, model_metadata, methods=["GET"], summary="Open Inference Protocol: model metadata")
        app.add_api_route(f"{base}/ready", model_ready, methods=["GET"], summary="Open Inference Protocol: model ready")
        app.add_api_route(f"{base}/infer", infer_route, methods=["POST"],
                          summary="Open Inference Protocol: which served model made these images")  # fmt: skip
