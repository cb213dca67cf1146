"""Serving the app on uvicorn: a large listen backlog, the guarded protocol, and a graceful ``SIGTERM``.

The first ``SIGTERM`` (or Ctrl-C) starts draining: new requests get ``503`` with ``Connection: close`` and
``/readyz`` fails while the listener stays open, requests already admitted are answered, and once none is
left (or ``drain_timeout_s`` passed) uvicorn shuts down and the process exits 0. A second signal exits at
once. ``ServiceThread`` runs the same server in a background thread (tests, embedding in another program).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from genorigin.service.app import create_app
from genorigin.service.core import Service
from genorigin.service.protocol import guarded_protocol

log = logging.getLogger("genorigin.service")
DEFAULT_BACKLOG = 2048


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining the service on the first signal instead of closing the listener."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the exit code
        # would be the signal's, not 0
        if not self.service.draining:
            self.service.begin_drain()
        elif self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.service.drained():
            self.should_exit = True
        return await super().on_tick(counter)


def make_server(service: Service, host: str = "127.0.0.1", port: int = 0, *, backlog: int = DEFAULT_BACKLOG,
                log_level: str = "info") -> tuple[GracefulServer, socket.socket]:  # fmt: skip
    """The server and its socket, bound and already listening (port 0: a free port, read it off the socket).

    Listening before uvicorn starts means a client that connects as soon as the address is printed waits in the
    backlog until the first accept, instead of being refused.
    """
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        http=guarded_protocol(service.limits.read_timeout_s),
        lifespan="on",
        access_log=False,  # the app writes one line per request (genorigin.access)
        log_config=None,
        log_level=log_level,
        backlog=backlog,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=int(service.limits.drain_timeout_s) + 1,
    )
    sock = config.bind_socket()
    sock.listen(backlog)
    return GracefulServer(config, service), sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(service: Service, host: str, port: int, *, backlog: int = DEFAULT_BACKLOG, log_level: str = "info",
          on_listening: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """Serve until drained after a signal; 0 on a clean exit."""
    server, sock = make_server(service, host, port, backlog=backlog, log_level=log_level)
    if on_listening is not None:
        on_listening(url_of(sock))
    server.run(sockets=[sock])
    return 0 if server.started else 1


class ServiceThread:
    """``with ServiceThread(service) as url:`` serves on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, **kwargs: object) -> None:
        self.service = service
        self.server, self.sock = make_server(service, host, port, **kwargs)  # type: ignore[arg-type]
        self.url = url_of(self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        end = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not self.service.ready():
            if time.monotonic() > end:
                raise TimeoutError(f"not ready after {timeout} s: {self.service.readiness()['reasons']}")
            time.sleep(0.02)

    def drain(self) -> None:
        """What the first SIGTERM does."""
        self.server.handle_exit(15, None)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
