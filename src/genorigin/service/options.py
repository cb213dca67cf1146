"""``genorigin serve``'s options, and the one ``ServiceConfig`` they ask for.

The command line and the Ray Serve entry point (``genorigin.scale.serve.build_app``: a config YAML's ``args``)
declare and read the same options here, so a replica serves exactly what ``genorigin serve`` would. Declaring
them imports no torch (``genorigin serve --help`` answers at once); building the config imports the service.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genorigin.models import named_specs, per_model
from genorigin.runtime.backends.registry import backend_names

if TYPE_CHECKING:
    from genorigin.service.config import ServiceConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]SPEC",
        help="bundled name, .pt file or package (repeatable: several models in one process)",
    )
    p.add_argument(
        "--calibration",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="calibration file of a model (default: the model's own); NAME= needed with several models",
    )
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="encoder of a model calibrated with encoder starts (default: beside the model)",
    )
    p.add_argument("--alpha", type=float, default=None, help="override the calibrations' test level")
    p.add_argument("--rule", choices=["grubbs", "quantile"], default="grubbs")
    p.add_argument("--backend", choices=backend_names(), default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the backends")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8080, help="0: a free port (printed)")
    g.add_argument("--backlog", type=int, default=2048, help="listen backlog: connections waiting to be accepted")
    g.add_argument("--token-file", help="bearer token for /v1/* and /metrics (required off loopback)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g = p.add_argument_group("batching and admission")
    g.add_argument("--max-batch", type=int, default=32, help="images in the running inversion at most")
    g.add_argument("--max-queue", type=int, default=None, help="jobs waiting for a slot at most (default: "
                   "--max-batch, one batch); beyond it: 503 with Retry-After")  # fmt: skip
    g.add_argument("--batching", choices=["continuous", "complete"], default="continuous",
                   help="continuous: join the running inversion at the next checkpoint; complete: the old "
                   "batch-to-completion worker (for comparison)")  # fmt: skip
    g.add_argument("--max-wait-ms", type=float, default=5.0, help="complete batching: wait for company this long")
    g.add_argument("--deadline-ms", type=float, default=30_000.0, help="default per-request deadline")
    g.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit")
    g.add_argument("--max-files", type=int, default=16, help="images in one multipart request at most")
    g.add_argument("--read-timeout-s", type=float, default=10.0, help="silence allowed while a request arrives")
    g.add_argument("--drain-timeout-s", type=float, default=60.0, help="SIGTERM: wait this long for in-flight")
    g = p.add_argument_group("scale-out on Ray Serve (the [ray] extra; docs/scale.md)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process serves; ray: a Ray Serve deployment of --replicas replicas, each this "
                   "service (same API and answers; default: %(default)s)")  # fmt: skip
    g.add_argument("--replicas", type=int, default=1, help="--engine ray: replicas of the service "
                   "(default: %(default)s)")  # fmt: skip
    g.add_argument("--ray-address", default=None, help="--engine ray: the cluster (default: $RAY_ADDRESS, else "
                   "a `ray start` cluster on this machine, else a new local one)")  # fmt: skip
    g.add_argument("--num-cpus", type=float, default=1.0, help="--engine ray: CPUs reserved per "
                   "replica (default: %(default)s)")  # fmt: skip
    g.add_argument("--num-gpus", type=float, default=0.0, help="--engine ray: GPUs reserved per "
                   "replica (default: %(default)s)")  # fmt: skip
    g = p.add_argument_group("schedule (default: the calibration's preset; must match `attribute` for equal verdicts)")
    g.add_argument("--check-every", type=int, default=None)
    g.add_argument("--exit-margin", type=float, default=None)
    g.add_argument("--exit-envelope-rank", type=int, default=None)
    g.add_argument("--exit-min-step", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)


def service_config(args: argparse.Namespace) -> ServiceConfig:
    """The service the options ask for, as data: built by ``genorigin serve`` in its process, or by each Ray
    replica (``genorigin.scale.serve``) from the same config. Reads the bearer token (``read_token``)."""
    from genorigin.service.admission import Limits
    from genorigin.service.config import ModelRequest, ServiceConfig

    token = read_token(args)
    specs = named_specs(args.model)
    names = [n for n, _ in specs]
    cals, encs = per_model(args.calibration, names, "--calibration"), per_model(args.encoder, names, "--encoder")
    schedule = {k: getattr(args, k) for k in ("check_every", "exit_margin", "exit_envelope_rank", "exit_min_step",
                                              "seed")}  # fmt: skip
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_files=args.max_files,
                    deadline_ms=args.deadline_ms, read_timeout_s=args.read_timeout_s,
                    drain_timeout_s=args.drain_timeout_s, token=token)  # fmt: skip
    return ServiceConfig(tuple(ModelRequest(n, spec, cals.get(n), encs.get(n)) for n, spec in specs), limits,
                         backend=args.backend, threads=args.threads, alpha=args.alpha, rule=args.rule,
                         max_batch=args.max_batch, schedule=schedule, max_queue=args.max_queue,
                         batching=args.batching, max_wait_ms=args.max_wait_ms)  # fmt: skip


def read_token(args: argparse.Namespace) -> str | None:
    from genorigin.service.server import is_loopback

    if args.token_file is None:
        if not is_loopback(args.host):
            raise ValueError(f"--host {args.host} is not a loopback address: pass --token-file (a bearer token)")
        return None
    token = Path(args.token_file).read_text().strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError(f"{args.token_file}: the token must be one word of at least 16 characters")
    return token


def parse_options(options: Mapping[str, Any], prog: str) -> argparse.Namespace:
    """Options given as a mapping (a config YAML's ``args``: flags without the dashes, a list repeats a flag,
    ``true`` is a bare flag), parsed by the command line's own parser: the same names, defaults and checks."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            argv += [flag] if v is True else [flag, str(v)]
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    return parser.parse_args(argv)
