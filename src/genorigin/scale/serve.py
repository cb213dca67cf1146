"""The HTTP service on Ray Serve: ``genorigin serve --engine ray --replicas N``, ``serve run``, a config YAML.

Each replica builds the service ``genorigin serve`` runs in one process, from the same ``ServiceConfig``
(``src/genorigin/service/config.py``): the same models and calibrations, the same continuous-batching worker per
model, and the same ASGI app (``src/genorigin/service/app.py``: routes, JSON errors, admission, metrics). Ray Serve's
proxy spreads requests over the replicas; answers and their schema are those of ``genorigin serve``.

What changes with Ray Serve in front: Ray's proxy, not genorigin's guarded uvicorn protocol, parses HTTP (the
header read timeout and the HTTP/0.9 refusal of ``src/genorigin/service/protocol.py`` do not apply); ``/healthz``,
``/readyz`` and ``/metrics`` describe whichever replica answered; Ray restarts a replica whose health check
(its workers alive) fails; draining is Ray's graceful shutdown (``drain_timeout_s``). Each replica takes
``ServiceConfig.capacity`` requests at once (``max_ongoing_requests``, the service's own admission bound); past
that Ray's proxy queues as many again (``max_queued_requests``) and then answers 503 itself.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading
from typing import Any

from ray import serve
from ray.serve import Application

from genorigin.scale.cluster import connect
from genorigin.service.app import create_app
from genorigin.service.config import ServiceConfig
from genorigin.service.options import parse_options, service_config
from genorigin.threads import use_threads

APP_NAME = "genorigin"


@serve.deployment
@serve.ingress()
class ServiceReplica:
    """One replica: the service built from ``config`` (models loaded once), behind the service's own app."""

    def __init__(self, config: ServiceConfig) -> None:
        use_threads(config.threads)
        self.service = config.build()

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.service)  # its lifespan starts the workers and the warm-up, and closes them

    def check_health(self) -> None:
        """Ray's liveness probe: every model's worker thread runs (``/healthz``); raising restarts the replica."""
        if not self.service.alive():
            raise RuntimeError("a model's worker thread stopped")


def application(config: ServiceConfig, *, replicas: int = 1, num_cpus: float = 1.0,
                num_gpus: float = 0.0) -> Application:  # fmt: skip
    """The deployment, bound: ``replicas`` replicas of the service, ``num_cpus``/``num_gpus`` reserved each.

    Torch threads per replica default to its CPUs. Paths in ``config`` are made absolute here.
    """
    if replicas < 1:
        raise ValueError(f"--replicas must be ≥ 1, got {replicas}")
    config = dataclasses.replace(config.resolved(), threads=config.threads or max(1, int(num_cpus)))
    options = ServiceReplica.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=config.capacity,
        max_queued_requests=config.capacity,
        graceful_shutdown_timeout_s=config.limits.drain_timeout_s,
        health_check_period_s=10,
    )
    return options.bind(config)


def build_app(args: dict[str, Any]) -> Application:
    """``serve run`` and config-YAML entry point (``import_path: genorigin.scale.serve:build_app``).

    ``args`` are ``genorigin serve``'s flags without the dashes, parsed by its own parser: ``model: [dcgan_a]``,
    ``calibration: [PATH]``, ``max_batch: 16``, ``replicas: 2``, ``num_cpus: 1`` … (a list repeats a flag,
    ``true`` is a bare flag). Host and port are the Serve config's ``http_options``.
    """
    ns = parse_options(args, prog="genorigin.scale.serve:build_app")
    return application(service_config(ns), replicas=ns.replicas, num_cpus=ns.num_cpus, num_gpus=ns.num_gpus)


def deploy(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8080, *, replicas: int = 1,
           address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0) -> str:  # fmt: skip
    """Check the models here (one-line errors before any replica starts; on the default backend, as the driver
    may have no GPU), start Serve's proxy on ``host:port`` (0: a free port) and run the application; returns
    its URL once every replica is up."""
    dataclasses.replace(config, backend=None).load()
    connect(address, quiet=True)
    port = port or _free_port(host)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(config, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus), name=APP_NAME,
              route_prefix="/")  # fmt: skip
    return f"http://{host}:{port}"


def serve_on_ray(config: ServiceConfig, host: str, port: int, *, replicas: int = 1, address: str | None = None,
                 num_cpus: float = 1.0, num_gpus: float = 0.0) -> int:  # fmt: skip
    """``genorigin serve --engine ray``: deploy, then wait for SIGTERM or Ctrl-C, which deletes the application
    (Ray drains each replica for up to ``drain_timeout_s``); 0 on a clean exit."""
    url = deploy(config, host, port, replicas=replicas, address=address, num_cpus=num_cpus, num_gpus=num_gpus)
    names = ", ".join(f"{m.name} ({m.spec})" for m in config.models)
    print(f"serving {names} on {url} with Ray Serve, {replicas} replica(s) (POST /v1/attribute, GET /v1/models, "
          f"/docs, /healthz, /readyz, /metrics)", flush=True)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.delete(APP_NAME)
    serve.shutdown()
    return 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
