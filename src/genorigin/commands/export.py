"""genorigin export: an attribution package (forward, gradient and loss ONNX graphs + manifest) for ONNX
Runtime and TensorRT, from a model or a third-party ONNX generator."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genorigin import workflow
from genorigin.errors import EXIT_OK, CliError
from genorigin.progress import Progress

WEIGHT_STORAGE = ("float32", "float16", "bfloat16")  # genorigin.export.weights.STORAGE_TYPES, without importing onnx


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a bundled model name, a genorigin .pt model file or a local diffusers folder")
    src.add_argument("--onnx", type=Path, help="a third-party ONNX generator (one latent input, one N×C×H×W output)")
    p.add_argument(
        "--output-range",
        default="-1,1",
        metavar="LOW,HIGH",
        help="--onnx only: the value range of the generator's output",
    )
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM/DDPM pipeline folders only: sampler steps K")
    p.add_argument(
        "--weights",
        choices=WEIGHT_STORAGE,
        default="float32",
        help="how weights.bin stores float32 weights: float16/bfloat16 halve the package (the package is then the "
        "model with rounded weights; export validates against exactly that)",
    )
    p.add_argument(
        "--activation-budget",
        type=float,
        default=None,
        metavar="GIB",
        help="memory (GiB) a batch of 2 may take for activations on the target machine: where the plain gradient "
        "graphs would need more, they are rematerialised (recompute instead of keep; default: 60%% of what this "
        "machine has free)",
    )
    p.add_argument("--out", type=Path, required=True, help="package folder")
    p.add_argument("--force", action="store_true", help="replace a non-empty package folder")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--quiet", action="store_true", help="no progress")


def output_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise CliError(f"--output-range must be LOW,HIGH (e.g. -1,1), got {text!r}") from exc
    return lo, hi


def run(args: argparse.Namespace) -> int:
    from genorigin.commands.args import check_ranges
    from genorigin.export.package import AttributionPackage, export_generator, export_onnx_file, export_steps

    check_ranges(args)
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CliError(f"{out} exists and is not an empty folder; pass --force to replace it")
    low_high = output_range(args.output_range) if args.onnx else None
    t0 = time.perf_counter()
    steps = export_steps("onnx" if args.onnx else "module", args.weights)
    with Progress(len(steps), "export", "steps", quiet=args.quiet) as bar:
        budget = None if args.activation_budget is None else int(args.activation_budget * 2**30)
        kw = {
            "storage": args.weights,
            "activation_budget": budget,
            "overwrite": args.force,
            "progress": lambda _: bar.update(),
        }
        try:
            if args.onnx:
                export_onnx_file(args.onnx, out, output_range=low_high, **kw)
            else:
                model = workflow.resolve(args.model, args.ddim_steps)
                export_generator(model.generator, out, **kw)
        except (ValueError, FileExistsError) as exc:
            raise CliError(str(exc)) from exc
    pkg = AttributionPackage.load(out)
    summary = {"package": str(out), "seconds": time.perf_counter() - t0, "manifest": pkg.manifest}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        files = [e["file"] for e in pkg.manifest["graphs"].values()]
        graphs = ", ".join(files + ([pkg.weights_path.name] if pkg.weights_path else []))
        print(f"exported {pkg.manifest['name']} → {out} ({graphs}) in {summary['seconds']:.1f} s")
    return EXIT_OK
