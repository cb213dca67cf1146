"""uvicorn's HTTP/1.1 protocol (h11) with the guards a public endpoint needs before any request exists.

* Headers must be complete within the read timeout: a client that sends part of a request and stops is
  answered ``408`` and closed, instead of holding its connection forever. A fresh connection that has sent
  nothing yet waits twice as long, then gets the same ``408``: no connection is closed unanswered. Its first
  byte is late because of the client's own scheduling (a client opening many connections at once writes them
  one after the other), not a slow network, and an idle socket costs the server nothing but a descriptor.
* Every refusal here is followed by a lingering close: the answer is sent, the write side shut, and whatever
  the client still sends is read and discarded until it closes (at most ``LINGER_S``). Closing with unread
  data would make the kernel send a reset, which can destroy the answer before the client reads it.
* A request line that is not ``METHOD TARGET HTTP/x.y`` (an HTTP/0.9 ``GET /``) is answered ``400`` as soon as
  the line ends; h11 would wait for a blank line that never comes.
* Malformed requests (a non-numeric or negative ``Content-Length`` …) get the service's JSON error, not text.
Each refusal here writes the one access-log line its request gets.
"""

from __future__ import annotations

import asyncio
import logging
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from genorigin.service.errors import error_bytes

access_log = logging.getLogger("genorigin.access")
REQUEST_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/\d\.\d\r?$")
MAX_LINE = 8192
FIRST_BYTE_FACTOR = 2.0  # a connection that has sent nothing waits this many read timeouts
LINGER_S = 2.0  # after a refusal: read and discard what the client still sends, this long at most


def raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = error_bytes(status, code, message)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=…)``, with this header timeout."""

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _head: bytes = b""
        _fresh: bool = True  # no byte received yet on this connection
        _lingering: bool = False  # refused: discard what arrives until the client closes

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(FIRST_BYTE_FACTOR * header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return
            if self._fresh and data:
                self._fresh = False
                self._disarm()  # the first byte: from now on the read timeout applies
            waiting_head = self.conn.their_state is h11.IDLE
            if waiting_head and self._refuse_bad_line(data):
                return
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()  # still (or again, on a kept-alive connection) waiting for a request's headers
            else:
                self._disarm()
                self._head = b""

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, "Bad Request", "bad_http", f"malformed HTTP request: {msg}")

        # ---------------------------------------------------------------------------------------- guards
        def _refuse_bad_line(self, data: bytes) -> bool:
            self._head = (self._head + data)[: MAX_LINE + 2]
            line = self._head.lstrip(b"\r\n")
            end = line.find(b"\n")
            if end < 0 and len(line) <= MAX_LINE:
                return False
            if end >= 0 and REQUEST_LINE.match(line[:end]):
                return False
            self._refuse(400, "Bad Request", "bad_http", "the request line must be METHOD TARGET HTTP/1.x")
            return True

        def _arm(self, seconds: float = header_timeout_s) -> None:
            if self._timer is None and not self.transport.is_closing():
                self._timer = self.loop.call_later(seconds, self._header_timeout)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _header_timeout(self) -> None:
            self._timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._fresh:
                message = f"no request arrived within {FIRST_BYTE_FACTOR * header_timeout_s:g} s of connecting"
            else:
                message = f"request headers incomplete after {header_timeout_s:g} s"
            self._refuse(408, "Request Timeout", "request_timeout", message)

        def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            self.transport.write(raw_response(status, reason, code, message))
            self._linger()
            client = "{}:{}".format(*self.client) if self.client else "-"
            access_log.info('%s "-" %d %s', client, status, code)

        def _linger(self) -> None:
            """Shut the write side after the answer, discard what still arrives, close on the client's EOF (uvicorn's
            ``eof_received`` lets the transport close) or after ``LINGER_S``."""
            if not self.transport.can_write_eof():
                self.transport.close()
                return
            self._lingering = True
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    return GuardedH11Protocol
