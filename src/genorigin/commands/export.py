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

STEPS = (
    "exporting the forward graph",
    "building the VJP graph",
    "building the loss graph",
    "writing forward.onnx",
    "writing vjp.onnx",
    "writing loss_mse.onnx",
)


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
    from genorigin.export.package import AttributionPackage, export_generator, export_onnx_file

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CliError(f"{out} exists and is not an empty folder; pass --force to replace it")
    low_high = output_range(args.output_range) if args.onnx else None
    t0 = time.perf_counter()
    with Progress(len(STEPS), "export", "steps", quiet=args.quiet) as bar:
        try:
            if args.onnx:
                export_onnx_file(
                    args.onnx, out, output_range=low_high, overwrite=args.force, progress=lambda _: bar.update()
                )
            else:
                model = workflow.resolve(args.model, args.ddim_steps)
                export_generator(model.generator, out, overwrite=args.force, progress=lambda _: bar.update())
        except (ValueError, FileExistsError) as exc:
            raise CliError(str(exc)) from exc
    pkg = AttributionPackage.load(out)
    summary = {"package": str(out), "seconds": time.perf_counter() - t0, "manifest": pkg.manifest}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        graphs = ", ".join(e["file"] for e in pkg.manifest["graphs"].values())
        print(f"exported {pkg.manifest['name']} → {out} ({graphs}) in {summary['seconds']:.1f} s")
    return EXIT_OK
