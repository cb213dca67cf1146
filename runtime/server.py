"""Low-latency serving: a micro-batching attribution worker behind a small HTTP API.

Requests that arrive within ``max_wait_ms`` of each other are inverted together in one batch (the loop's
refilling keeps that batch full), so throughput grows with load while a lone request waits at most
``max_wait_ms`` before its inversion starts. One worker thread owns the model; HTTP threads only decode and
queue. Endpoints: ``POST /v1/attribute`` (body: PNG/JPEG/WebP bytes) → JSON result; ``GET /v1/model``;
``GET /healthz``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from genorigin.runtime.attribution import AttributionResult, Attributor

from genorigin import __version__
from genorigin.images import ImageError, decode_rgb8

MAX_BODY_BYTES = 20 * 1024 * 1024


class MicroBatcher:
    """Collects prepared images from many threads and runs them through one Attributor in batches."""

    def __init__(self, attributor: Attributor, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.attributor = attributor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[tuple[np.ndarray, str, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="genorigin-worker", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, source: str) -> Future:
        future: Future = Future()
        self._queue.put((image, source, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._process(batch)

    def _process(self, batch: list[tuple[np.ndarray, str, Future]]) -> None:
        try:
            results = self.attributor.attribute(np.stack([b[0] for b in batch]), [b[1] for b in batch])
        except Exception as exc:  # the worker must survive a failed batch
            for _, _, f in batch:
                f.set_exception(exc)
            return
        for (_, _, f), r in zip(batch, results):
            f.set_result(r)


def make_handler(batcher: MicroBatcher, model_info: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    """Request handler bound to one batcher (http.server wants a class)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"genorigin/{__version__}"

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            return

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(HTTPStatus.OK, {"status": "ok"})
            elif self.path == "/v1/model":
                self._send(HTTPStatus.OK, model_info)
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/v1/attribute":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                return
            data = self.rfile.read(length)
            name = self.headers.get("X-Image-Name", "upload")
            try:
                pixels = decode_rgb8(data, name)
                image = batcher.attributor.generator.prepare_image(pixels)
            except (ImageError, ValueError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            t0 = time.perf_counter()
            try:
                result: AttributionResult = batcher.submit(image, name).result(timeout=600)
            except Exception as exc:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
                return
            payload = result.to_dict() | {"latency_ms": (time.perf_counter() - t0) * 1000.0}
            self._send(HTTPStatus.OK, payload)

    return Handler


class AttributionServer:
    """HTTP server + micro-batcher; ``with AttributionServer(...) as s:`` serves in a background thread."""

    def __init__(self, attributor: Attributor, host: str = "127.0.0.1", port: int = 8080, **batch_kw: Any) -> None:
        cal = attributor.calibration
        if cal is None:
            raise RuntimeError("the attributor needs a calibration before serving")
        info = {
            "genorigin_version": __version__,
            "model": attributor.generator.describe(),
            "settings": attributor.settings.to_dict(),
            "calibration": cal.to_dict()["summary"] | {"alpha": cal.alpha, "rule": attributor.rule},
        }
        self.batcher = MicroBatcher(attributor, **batch_kw)
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.batcher, info))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def __enter__(self) -> AttributionServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.close()
