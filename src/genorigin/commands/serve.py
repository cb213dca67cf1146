"""``genorigin serve``: the attribution service for one or several models (src/genorigin/service, docs/serving.md).

Exit codes: 0 after a clean shutdown (SIGTERM drains in-flight requests first); 2 when nothing could be served
(a model, calibration, encoder or token problem, named in one line).
"""

from __future__ import annotations

import argparse
import logging
import sys

from genorigin.errors import GenoriginError
from genorigin.service import options

EXIT_OK, EXIT_FAILED = 0, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from genorigin.service import ServiceLoadError, serve

    try:
        config = options.service_config(args)
        if args.engine == "ray":
            from genorigin.scale.serve import serve_on_ray

            return serve_on_ray(config, args.host, args.port, replicas=args.replicas, address=args.ray_address,
                                num_cpus=args.num_cpus, num_gpus=args.num_gpus)  # fmt: skip
        service = config.build()
    except (ServiceLoadError, GenoriginError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    names = ", ".join(f"{m.name} ({m.source})" for m in (w.served for w in service.workers.values()))

    def listening(url: str) -> None:
        print(f"serving {names} on {url} (POST /v1/attribute, GET /v1/models, /docs, /healthz, /readyz, "
              f"/metrics; Open Inference Protocol under /v2)", flush=True)  # fmt: skip

    return serve(service, args.host, args.port, backlog=args.backlog, log_level=args.log_level,
                 on_listening=listening)  # fmt: skip
