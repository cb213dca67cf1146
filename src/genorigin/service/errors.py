"""The service's one error shape: ``{"error": {"status", "code", "message", "details"}}``, whatever refused it.

Clients branch on ``code`` (stable, snake_case) and show ``message``; ``details`` carries what is known (for a
deadline: the best score so far and the steps done). Protocol-level refusals (``protocol.py``) use it too.
"""

from __future__ import annotations

import json
from typing import Any

# code → HTTP status: the stable vocabulary of the service's errors
CODES: dict[str, int] = {
    "bad_request": 400,
    "bad_http": 400,
    "unreadable_image": 400,
    "unauthorized": 401,
    "not_found": 404,
    "unknown_model": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "too_large": 413,
    "unsupported_image": 415,
    "unsupported_encoding": 415,
    "internal": 500,
    "overloaded": 503,
    "draining": 503,
    "deadline_exceeded": 504,
}


class ServiceError(Exception):
    """An answer other than 200: its code (see ``CODES``), message, details and extra headers."""

    def __init__(self, code: str, message: str, *, status: int | None = None, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.code = code
        self.status = status if status is not None else CODES[code]
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return error_payload(self.status, self.code, self.message, self.details)


def error_payload(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, "details": details or {}}}


def error_bytes(status: int, code: str, message: str) -> bytes:
    return json.dumps(error_payload(status, code, message)).encode()


def code_for_status(status: int) -> str:
    """The code of a status raised by the framework (404 unknown path, 405 wrong method …)."""
    return next((c for c, s in CODES.items() if s == status and c not in ("bad_http", "unknown_model")), "error")
