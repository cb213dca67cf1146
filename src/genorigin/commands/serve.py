"""genorigin serve: the HTTP service on one calibrated model (a thin port of the old ``cmd_serve``; the service
itself is being rewritten in runtime/service/, which will replace this module)."""

from __future__ import annotations

import argparse

from genorigin.commands import args as common
from genorigin.errors import EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model(p, "the model to serve")
    common.add_calibration_choice(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port)")
    p.add_argument("--max-batch", type=int, default=32, help="requests inverted together at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for company")
    common.add_method_options(p, attributing=True)


def run(args: argparse.Namespace) -> int:
    from genorigin.runtime.server import AttributionServer

    model, loaded = common.load_for_attribution(args)
    server = AttributionServer(
        loaded.method,
        args.host,
        args.port,
        max_batch=args.max_batch,  # type: ignore[arg-type]
        max_wait_ms=args.max_wait_ms,
    )
    print(f"serving {model.source} on {server.url} (POST /v1/attribute, GET /v1/model, GET /healthz)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return EXIT_OK
