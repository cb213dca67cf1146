"""Request bodies: read within a size limit and a read timeout, split into uploads, decoded per model.

Every answer is sent after the whole body arrived: an over-size body is read and discarded (up to
``Limits.drain_limit_bytes``), so a client that sends it all sees the ``413``, not a broken pipe. A body that
stops arriving (a ``Content-Length`` longer than what is sent) is answered ``408`` after the read timeout.
Decoding goes through ``genorigin.images.decode_upload``: its pixel limit (the decompression-bomb guard) and
its process-wide decode gate apply to every upload.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from genorigin.service.admission import Limits
from genorigin.service.errors import ServiceError

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client closed the connection before its request was answered."""


@dataclass
class Upload:
    """One image and the name its result is reported under: its encoded bytes, or (the Open Inference
    Protocol's ``UINT8`` input) its decoded H×W×3 pixels."""

    name: str
    data: bytes = b""
    pixels: np.ndarray | None = None


class Body:
    """A request's body as it arrives; ``complete`` once its last chunk was read (nothing left to drain)."""

    def __init__(self, receive: Receive, headers: Headers, limits: Limits) -> None:
        self.receive = receive
        self.headers = headers
        self.limits = limits
        self.complete = False

    async def _chunk(self, timeout: float) -> bytes:
        try:
            message = await asyncio.wait_for(self.receive(), timeout)
        except asyncio.TimeoutError:
            raise ServiceError("request_timeout", f"the request body stopped arriving for {timeout:g} s",
                               headers={"Connection": "close"}) from None  # fmt: skip
        if message["type"] == "http.disconnect":
            raise ClientGone()
        self.complete = not message.get("more_body", False)
        return message.get("body", b"")

    async def read(self) -> bytes:
        """The whole body, at most ``max_body_bytes``; ``413`` once an over-size body has been drained."""
        limits = self.limits
        declared = self.headers.get("content-length")
        size = int(declared) if declared is not None and declared.isdigit() else None  # h11 checked its syntax
        too_large = ServiceError("too_large", f"request body over {limits.max_body_bytes} bytes",
                                 details={"limit_bytes": limits.max_body_bytes})  # fmt: skip
        if size is not None and size > limits.drain_limit_bytes:
            too_large.headers["Connection"] = "close"  # too large even to drain: answer now and close
            raise too_large
        parts: list[bytes] = []
        received = 0
        while not self.complete:
            chunk = await self._chunk(limits.read_timeout_s)
            received += len(chunk)
            if received <= limits.max_body_bytes:
                parts.append(chunk)
            elif received > limits.drain_limit_bytes:
                too_large.headers["Connection"] = "close"
                raise too_large
            else:
                parts.clear()  # over the limit: keep reading, keep nothing
        if received > limits.max_body_bytes:
            raise too_large
        return b"".join(parts)

    async def drain(self) -> bool:
        """Read and discard what is left before a refusal; False if it could not be (close the connection)."""
        received = 0
        try:
            while not self.complete:
                received += len(await self._chunk(min(self.limits.read_timeout_s, 2.0)))
                if received > self.limits.drain_limit_bytes:
                    return False
        except (ServiceError, ClientGone):
            return False
        return True


def is_multipart(headers: Headers) -> bool:
    return headers.get("content-type", "").lower().startswith("multipart/form-data")


async def split_uploads(body: bytes, headers: Headers, query_name: str | None, limits: Limits) -> list[Upload]:
    """A raw image body → one upload; ``multipart/form-data`` → one per file part (at most ``max_files``)."""
    if not is_multipart(headers):
        name = urllib.parse.unquote(headers.get("x-image-name") or "") or query_name or "upload"
        return [Upload(name, body)]

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=limits.max_files, max_fields=limits.max_files,
                             max_part_size=limits.max_body_bytes)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError("bad_request", f"malformed multipart/form-data: {exc.message}") from exc
    uploads = []
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(value.filename or f"file[{len(uploads)}]", await value.read()))
    finally:
        await form.close()
    if not uploads:
        raise ServiceError("bad_request", "multipart/form-data request without a file part (use -F file=@x.png)")
    return uploads
