"""genorigin build-engine: TensorRT engines for a model's exported graphs (GPU machines), cached and verified."""

from __future__ import annotations

import argparse
import json

from genorigin import workflow
from genorigin.errors import EXIT_OK, CliError
from genorigin.runtime.backends.gpu.profiles import parse_profile
from genorigin.runtime.backends.gpu.trt_env import PRECISIONS  # light: TensorRT itself is imported only to build


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a bundled model name, a genorigin .pt model file (exported to a package in the user cache "
        "first) or an attribution package folder",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="engine precision")
    p.add_argument(
        "--batch",
        action="append",
        type=parse_profile,
        metavar="MIN:OPT:MAX",
        help="batch profile (repeatable; default: the built-in profiles)",
    )
    p.add_argument("--cache-dir", "--out", dest="cache_dir", help="engine folder (default: the user cache)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (default: none)")
    p.add_argument("--workspace-gib", type=float, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--opt-level", type=int, help="builder optimisation level (default: TensorRT's)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM/DDPM pipeline folders only: sampler steps K")
    p.add_argument("--force", action="store_true", help="rebuild even when a verified engine is cached")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")


def run(args: argparse.Namespace) -> int:
    from genorigin.runtime.backends.gpu.trt_build import build_engines

    model = workflow.resolve(args.model, args.ddim_steps)
    try:
        built = build_engines(
            model.package().root,
            precision=args.precision,
            profiles=args.batch or None,
            cache_dir=args.cache_dir,
            timing_cache=args.timing_cache,
            workspace_bytes=int(args.workspace_gib * 2**30) if args.workspace_gib else None,
            optimization_level=args.opt_level,
            device=args.device,
            force=args.force,
        )
    except (ImportError, RuntimeError, ValueError) as exc:
        raise CliError(f"cannot build TensorRT engines: {exc}") from exc
    summary = {
        role: {"path": str(e.path), "built": e.built, "seconds": e.seconds, "reason": e.reason}
        for role, e in built.items()
    }
    print(json.dumps(summary, indent=1) if args.json else "\n".join(f"{r}: {v}" for r, v in summary.items()))
    return EXIT_OK
