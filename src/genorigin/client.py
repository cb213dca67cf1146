"""A Python client for ``genorigin serve`` (standard library only: it runs where the service's extras do not).

    from genorigin.client import Client
    answer = Client("http://127.0.0.1:8080").attribute("upload.png")      # every served model
    answer.model, answer.verdict, answer.results["dcgan_a"].p_value

``503`` answers (overloaded, draining) are retried after their ``Retry-After``, up to ``retries`` times, as are
refused or reset connections (an attribution is idempotent: the same image gets the same answer). Other
refusals raise ``ServiceError`` with the service's stable error ``code``; a passed deadline raises
``DeadlineExceeded`` with the best score known when it passed.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ServiceError(Exception):
    """The service refused: HTTP ``status``, stable ``code`` (docs/serving.md), ``message`` and ``details``."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:  # fmt: skip
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after


class Overloaded(ServiceError):
    """Still ``503`` after every retry."""


class DeadlineExceeded(ServiceError):
    """``504``: no decision before the deadline; ``best_calibrated_loss`` and ``steps`` say how far it got."""

    @property
    def best_calibrated_loss(self) -> float | None:
        return self.details.get("best_calibrated_loss")

    @property
    def steps(self) -> int:
        return int(self.details.get("steps", 0))


@dataclass(frozen=True)
class ModelResult:
    """One model's verdict on the image."""

    model: str
    verdict: str  # "belonging" or "non-belonging"
    p_value: float | None
    calibrated_loss: float
    statistic: float
    critical_value: float
    steps: int
    stop_reason: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def belonging(self) -> bool:
        return self.verdict == "belonging"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelResult:
        return cls(d["model"], d["verdict"], d.get("p_value"), d["calibrated_loss"], d["statistic"],
                   d["critical_value"], int(d["steps"]), d["stop_reason"], d)  # fmt: skip


@dataclass(frozen=True)
class Attribution:
    """The answer for one image: ``model`` made it (None: none of the models asked), with each model's result."""

    source: str
    model: str | None
    results: dict[str, ModelResult]
    accepting: tuple[str, ...] = ()
    rule: str | None = None  # the cross-model rule, when several models were asked
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def belonging(self) -> bool:
        return self.model is not None

    @property
    def verdict(self) -> str:
        return "belonging" if self.belonging else "non-belonging"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attribution:
        if "models" in d:  # the decision across models
            results = {m: ModelResult.from_json(r) for m, r in d["models"].items()}
            return cls(d["source"], d["decision"], results, tuple(d["accepting"]), d["rule"], d)
        r = ModelResult.from_json(d)
        return cls(d["source"], r.model if r.belonging else None, {r.model: r}, (r.model,) * r.belonging, None, d)


class Client:
    """``Client(url, token=None)``; one HTTP connection per call, so one client may be shared by threads."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 120.0, retries: int = 3,
                 max_retry_wait: float = 30.0) -> None:  # fmt: skip
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme, self.host, self.port = parsed.scheme, parsed.hostname, parsed.port
        self.base = parsed.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def attribute(self, image: str | Path | bytes, model: str | None = None, deadline_ms: float | None = None,
                  name: str | None = None) -> Attribution:  # fmt: skip
        """One image (a path or its bytes) against ``model``, or against every served model when None."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        name = name or ("upload" if isinstance(image, bytes) else Path(image).name)
        query = {k: v for k, v in (("model", model), ("deadline_ms", deadline_ms)) if v is not None}
        headers = {"Content-Type": "application/octet-stream", "X-Image-Name": urllib.parse.quote(name)}
        return Attribution.from_json(self._call("POST", "/v1/attribute", query, data, headers))

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models")["models"])

    def ready(self) -> bool:
        try:
            self._call("GET", "/readyz", retry=False)
        except (ServiceError, OSError):
            return False
        return True

    # ------------------------------------------------------------------------------------------ transport
    def _call(self, method: str, path: str, query: dict[str, Any] | None = None, body: bytes | None = None,
              headers: dict[str, str] | None = None, retry: bool = True) -> dict[str, Any]:  # fmt: skip
        target = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            try:
                status, retry_after, payload = self._once(method, target, body, headers)
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected) as exc:
                if not retry or attempt >= self.retries:
                    raise
                wait, error = min(self.max_retry_wait, 0.5 * 2**attempt), exc
            else:
                if status < 400:
                    return payload
                error = _error(status, payload, retry_after)
                if status != 503 or not retry or attempt >= self.retries:
                    raise error
                wait = min(self.max_retry_wait, retry_after if retry_after is not None else 1.0)
            attempt += 1
            time.sleep(wait)

    def _once(self, method: str, target: str, body: bytes | None, headers: dict[str, str]
              ) -> tuple[int, float | None, dict[str, Any]]:  # fmt: skip
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            retry_after = resp.getheader("Retry-After")
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            payload = {"error": {"code": "not_json", "message": raw[:200].decode("latin-1")}}
        return resp.status, float(retry_after) if retry_after and retry_after.isdigit() else None, payload


def _error(status: int, payload: dict[str, Any], retry_after: float | None) -> ServiceError:
    e = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    kind = {503: Overloaded, 504: DeadlineExceeded}.get(status, ServiceError)
    return kind(status, str(e.get("code", "error")), str(e.get("message", "")), e.get("details"), retry_after)
