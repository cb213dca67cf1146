"""Command line: genorigin calibrate | attribute | demo.

Exit codes: 0 every input was attributed; 1 some inputs could not be read (the others were attributed);
2 nothing could be done (bad arguments, model or calibration).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from genorigin import __version__
from genorigin.images import ImageError, expand_inputs, load_rgb8, save_png
from genorigin.models import BACKENDS, ResolvedModel, resolve_model
from genorigin.runtime.attribution import AttributionResult, Attributor
from genorigin.runtime.calibration import Calibration
from genorigin.runtime.inversion import InversionSettings, Schedule

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2


class CliError(Exception):
    """An error that ends the command with a one-line message and exit code 2."""


def _progress(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=quiet or None, file=sys.stderr, leave=False)


def _add_inversion_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inversion (a calibration is only valid for the settings it was made with)")
    g.add_argument("--steps", "--max-steps", dest="steps", type=int, default=1500, help="Adam steps per image")
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--restarts", type=int, default=InversionSettings.restarts,
                   help="random starts per image (best one counts)")  # fmt: skip
    g.add_argument("--halve-starts-at", type=int, nargs="*", default=list(InversionSettings.halve_starts_at),
                   metavar="STEP",
                   help="keep the better half of each image's starts at these steps (none: keep all)")  # fmt: skip
    g.add_argument("--loss", choices=["mse", "l1"], default="mse")
    g.add_argument("--batch-size", type=int, default=32, help="images in flight at once")
    g.add_argument("--check-every", type=int, default=50, help="steps between early-exit checks")
    g.add_argument("--exit-margin", type=float, default=Schedule.exit_margin,
                   help="stop as non-belonging above this many times the belonging envelope")  # fmt: skip
    g.add_argument("--exit-envelope-rank", type=int, default=Schedule.exit_envelope_rank,
                   help="the envelope is the k-th largest accepted calibration score at each step")  # fmt: skip
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="CPU threads for the backend")
    g.add_argument("--method", default="inversion-random", choices=["inversion-random", "inversion-encoder", "aedr"],
                   help="latent-diffusion folders only: encoder-initialised inversion (LatentTracer settings) or "
                   "forward-only double reconstruction (AEDR)")  # fmt: skip
    g.add_argument("--ddim-steps", type=int, default=50, help="DDIM folders: sampler steps K inverted through")
    g.add_argument(
        "--backend", default=None, choices=BACKENDS, help="default: torch for PyTorch models, onnxruntime for packages"
    )


def _settings(args: argparse.Namespace) -> InversionSettings:
    try:
        return InversionSettings(
            steps=args.steps,
            lr=args.lr,
            restarts=args.restarts,
            loss=args.loss,
            halve_starts_at=tuple(args.halve_starts_at),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _schedule(args: argparse.Namespace, early_exit: bool = True) -> Schedule:
    try:
        return Schedule(
            batch_size=args.batch_size,
            check_every=args.check_every,
            seed=args.seed,
            early_exit=early_exit,
            exit_margin=args.exit_margin,
            exit_envelope_rank=args.exit_envelope_rank,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _resolve(spec: str, args: argparse.Namespace | None = None) -> ResolvedModel:
    try:
        return resolve_model(spec, ddim_steps=getattr(args, "ddim_steps", 50))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise CliError(str(exc).strip("'\"")) from exc


def _backend(model: ResolvedModel, args: argparse.Namespace):
    name = args.backend or ("torch" if model.generator.module is not None else "onnxruntime")
    try:
        return model.backend(name, args.loss, args.threads)
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc


# ----------------------------------------------------------------------------------------------- calibrate
def cmd_calibrate(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    model = _resolve(args.model, args)
    out = Path(args.out) if args.out else model.calibration_file(args.method)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; pass --force to replace it")
    attributor = make_attributor(model, args, early_exit=False)
    t0 = time.perf_counter()
    with _progress(args.samples, "calibrating", args.quiet) as bar:
        progress = {} if args.method == "aedr" else {"on_done": lambda _: bar.update()}
        cal = attributor.calibrate(args.samples, alpha=args.alpha, **progress)
    cal.save(out, overwrite=args.force)
    summary = {
        "calibration": str(out),
        "model": model.source,
        "seconds": time.perf_counter() - t0,
        **cal.to_dict()["summary"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"calibrated {model.source} on {cal.n} own samples in {summary['seconds']:.1f} s → {out}")
        print(
            f"  calibrated loss mean {cal.mean:.3e}, std {cal.std:.3e}; "
            f"Grubbs threshold {cal.grubbs_threshold:.3e} (α={cal.alpha}), quantile {cal.quantile_threshold:.3e}"
        )
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- attribute
def make_attributor(model: ResolvedModel, args: argparse.Namespace, early_exit: bool = True) -> Any:
    """The attributor for --method: the shared-loop Attributor, LatentTracer (same loop) or forward-only AEDR."""
    method = args.method
    if method == "inversion-random":
        return Attributor(model.generator, backend=_backend(model, args), settings=_settings(args),
                          schedule=_schedule(args, early_exit), rule=getattr(args, "rule", "grubbs"))  # fmt: skip
    if model.latent_model is None:
        raise CliError(f"--method {method} needs an AutoencoderKL (latent-diffusion) folder as --model")
    if method == "inversion-encoder":
        from genorigin.export.latent_diffusion import latent_tracer

        return latent_tracer(model.latent_model, schedule=_schedule(args, early_exit),
                             rule=getattr(args, "rule", "grubbs"))  # fmt: skip
    from genorigin.runtime.aedr import AEDRAttributor

    return AEDRAttributor(model.generator, model.latent_model.roundtrip)


def _load_calibration(args: argparse.Namespace, model: ResolvedModel, attributor: Any) -> Calibration:
    """Load the model's calibration for this method and these settings, and hand it to the attributor."""
    path = Path(args.calibration) if args.calibration else model.calibration_file(args.method)
    if not path.exists():
        raise CliError(f"no calibration at {path}: run `genorigin calibrate --model {args.model}` first")
    try:
        cal = Calibration.load(path, fingerprint=model.generator.fingerprint(),
                               settings=attributor.settings.to_dict(), method=attributor.method)  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    cal = cal.with_alpha(args.alpha) if args.alpha is not None else cal
    attributor.use_calibration(cal)
    return cal


def _read_images(specs: Sequence[str], model: ResolvedModel) -> tuple[list[str], np.ndarray, list[str]]:
    paths, errors = expand_inputs(specs)
    sources, arrays = [], []
    for p in paths:
        try:
            arrays.append(model.generator.prepare_image(load_rgb8(p)))
            sources.append(str(p))
        except ImageError as exc:
            errors.append(str(exc))
        except ValueError as exc:
            errors.append(f"{p}: {exc}")
    shape = (0, model.generator.channels, *model.generator.image_size)
    return sources, (np.stack(arrays) if arrays else np.zeros(shape, np.float32)), errors


def _check_outputs_free(paths: Sequence[Path], force: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not force:
        raise CliError(f"refusing to overwrite {', '.join(taken[:3])}{' …' if len(taken) > 3 else ''} (use --force)")


def run_attribution(
    attributor: Any, sources: list[str], images: np.ndarray, quiet: bool, keep_recon: bool
) -> list[AttributionResult]:
    if not isinstance(attributor, Attributor):  # forward-only methods: one pass, nothing to show progress on
        return attributor.attribute(images, sources)
    with _progress(len(images), "attributing", quiet) as bar:
        return attributor.attribute(images, sources, keep_reconstructions=keep_recon, on_done=lambda _: bar.update())


def format_table(results: Sequence[AttributionResult], labels: Sequence[str] | None = None) -> str:
    head = f"{'image':<34} {'verdict':<14} {'loss':>9} {'calib.':>9} {'G':>9} {'crit':>6} {'steps':>5}  stop"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(results):
        name = Path(r.source).name if labels is None else f"{labels[i]}/{Path(r.source).name}"
        lines.append(
            f"{name[:34]:<34} {r.verdict:<14} {r.loss:9.2e} {r.calibrated_loss:9.2e} {r.statistic:9.3g} "
            f"{r.critical_value:6.2f} {r.steps:5d}  {r.stop_reason}"
        )
    return "\n".join(lines)


def cmd_attribute(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    model = _resolve(args.model, args)
    attributor = make_attributor(model, args, early_exit=not args.no_early_exit)
    cal = _load_calibration(args, model, attributor)
    outputs = [Path(p) for p in (args.report, args.figure) if p]
    _check_outputs_free(outputs, args.force)
    sources, images, errors = _read_images(args.inputs, model)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not sources:
        print("error: no image could be read", file=sys.stderr)
        return EXIT_FAILED
    keep = bool(args.recon_dir or args.figure) and isinstance(attributor, Attributor)
    results = run_attribution(attributor, sources, images, args.quiet, keep)
    if args.recon_dir:
        _write_reconstructions(results, Path(args.recon_dir), args.force)
    report = _report(model, cal, attributor, results, errors)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    if args.figure:
        from genorigin.report import attribution_figure

        attribution_figure(results, images, cal, args.figure)
    print(json.dumps(report, indent=1) if args.json else format_table(results))
    return EXIT_PARTIAL if errors else EXIT_OK


def _write_reconstructions(results: Sequence[AttributionResult], folder: Path, force: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"{Path(r.source).stem}.recon.png" for r in results]
    _check_outputs_free(targets, force)
    for r, t in zip(results, targets):
        save_png(r.reconstruction, t)


def _report(
    model: ResolvedModel,
    cal: Calibration,
    attributor: Attributor,
    results: Sequence[AttributionResult],
    errors: Sequence[str],
) -> dict[str, Any]:
    return {
        "genorigin_version": __version__,
        "model": model.generator.describe() | {"source": model.source},
        "method": attributor.method,
        "backend": attributor.backend.describe() if hasattr(attributor, "backend") else {"backend": "torch"},
        "settings": attributor.settings.to_dict(),
        "schedule": attributor.schedule.__dict__ if hasattr(attributor, "schedule") else None,
        "calibration": {k: v for k, v in cal.to_dict().items() if k not in ("scores", "checkpoint_scores")},
        "results": [r.to_dict() for r in results],
        "errors": list(errors),
        "summary": {
            "images": len(results),
            "belonging": sum(r.belonging for r in results),
            "non_belonging": sum(not r.belonging for r in results),
            "unreadable": len(errors),
            "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0,
        },
    }


# ----------------------------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from genorigin.export.package import AttributionPackage, export_generator, export_onnx_file

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{out} exists and is not empty; pass --force to replace it")
    t0 = time.perf_counter()
    steps = ["exporting the forward graph", "building the VJP graph", "building the loss graph"] + [
        f"writing {f}" for f in ("forward.onnx", "vjp.onnx", "loss_mse.onnx")
    ]
    with tqdm(total=len(steps), desc="export", disable=args.quiet or None, file=sys.stderr, leave=False) as bar:

        def progress(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update()

        try:
            if args.onnx:
                lo, hi = (float(v) for v in args.output_range.split(","))
                export_onnx_file(args.onnx, out, output_range=(lo, hi), overwrite=args.force, progress=progress)
            else:
                model = _resolve(args.model, args)
                export_generator(model.generator, out, overwrite=args.force, progress=progress)
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


# ----------------------------------------------------------------------------------------------- build-engine
def cmd_build_engine(args: argparse.Namespace) -> int:
    from genorigin.runtime.engines import build_engines

    model = _resolve(args.model, args)
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


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genorigin", description="Was this image generated by this model?")
    parser.add_argument("--version", action="version", version=f"genorigin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("calibrate", help="invert N of the model's own samples; save the belonging statistics")
    p.add_argument("--model", required=True, help="bundled model name (dcgan_a, dcgan_b, vae) or a .pt model file")
    p.add_argument("--samples", type=int, default=100, help="own samples to calibrate on (N)")
    p.add_argument("--alpha", type=float, default=0.05, help="test level stored in the calibration")
    p.add_argument("--out", help="calibration file (default: beside the model / user cache for bundled models)")
    p.add_argument("--force", action="store_true", help="replace an existing calibration file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_inversion_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("attribute", help="decide for each image whether the model generated it")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (PNG/JPEG/WebP, 8-bit RGB)")
    p.add_argument("--model", required=True)
    p.add_argument("--calibration", help="calibration file (default: the model's)")
    p.add_argument("--rule", choices=["grubbs", "quantile"], default="grubbs", help="decision rule")
    p.add_argument("--alpha", type=float, default=None, help="override the calibration's test level")
    p.add_argument("--no-early-exit", action="store_true", help="spend the full step budget on every image")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--figure", help="write a PNG figure (reconstructions, loss curves, scores) here")
    p.add_argument("--recon-dir", help="write each best reconstruction as <name>.recon.png here")
    p.add_argument("--force", action="store_true", help="allow replacing existing output files")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.add_argument("--quiet", action="store_true")
    _add_inversion_args(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("export", help="write an attribution package: forward + gradient ONNX graphs + manifest")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="bundled model name or .pt model file")
    src.add_argument("--onnx", help="a third-party ONNX generator (one latent input, one N×C×H×W output)")
    p.add_argument("--output-range", default="-1,1", help="value range of the ONNX generator's output (low,high)")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM folders: sampler steps K unrolled in the graph")
    p.add_argument("--out", required=True, help="package folder")
    p.add_argument("--force", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    from genorigin.runtime.engine_cache import PRECISIONS, parse_profile

    p = sub.add_parser("build-engine", help="build (or reuse cached) TensorRT engines for a model's graphs")
    p.add_argument("--model", required=True, help="bundled name, .pt file or attribution package")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--batch", action="append", type=parse_profile, help="batch profile MIN:OPT:MAX (repeatable)")
    p.add_argument("--cache-dir", "--out", dest="cache_dir", help="engine folder (default: the user cache)")
    p.add_argument("--timing-cache")
    p.add_argument("--workspace-gib", type=float)
    p.add_argument("--opt-level", type=int)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even when a verified engine is cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build_engine)

    from genorigin.commands import serve

    p = sub.add_parser("serve", help="HTTP service: POST images to /v1/attribute, get JSON verdicts (docs/serving.md)")
    serve.add_arguments(p)
    p.set_defaults(func=serve.run)

    from genorigin.demo import add_demo_parser

    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
