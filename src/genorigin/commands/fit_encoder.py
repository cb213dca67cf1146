"""genorigin fit-encoder: fit the small encoder the fast preset starts inversions from, once per model.

Saved where the model's encoder lives (see ``--encoder``); ``genorigin calibrate`` fits it itself when it is
missing, so this command is for fitting ahead of time, longer, or again. A calibration pins the encoder it
was made with: refitting means recalibrating.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genorigin import workflow
from genorigin.commands import args as common
from genorigin.errors import EXIT_OK, CliError
from genorigin.outputs import OutputPlan
from genorigin.progress import Progress
from genorigin.runtime.loop.settings import FitSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model(p, "the model to fit an encoder for")
    p.add_argument("--steps", type=int, default=FitSettings.steps, help="training steps")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after this many seconds (default: no limit; the steps done are recorded)",
    )
    p.add_argument("--seed", type=int, default=FitSettings.seed, help="seed of the training samples and weights")
    p.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="where to save it (default: the model's encoder file: shipped beside a bundled model, else "
        "the user cache; <file>.encoder.pt; <package>/encoder.onnx; <folder>/genorigin.encoder.pt)",
    )
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM/DDPM pipeline folders only: sampler steps K")
    p.add_argument("--force", action="store_true", help="replace an existing encoder (recalibrate afterwards)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--quiet", action="store_true", help="no progress")
    common.add_performance(p)


def run(args: argparse.Namespace) -> int:
    from genorigin.runtime.methods.encoder import fit_generator_encoder  # torch: for the fit, not for --help

    model = workflow.resolve(args.model, args.ddim_steps, common.configure_threads(args))
    path = args.encoder or model.encoder_path
    OutputPlan(files={"encoder": path}).check(args.force)
    try:
        settings = FitSettings(steps=args.steps, seed=args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    t0 = time.perf_counter()
    with Progress(settings.steps, "fitting encoder", "steps", quiet=args.quiet) as bar:
        fitted = fit_generator_encoder(
            model.generator, settings, seconds=args.seconds, on_step=lambda step, _: bar.update()
        )
    workflow.save_encoder(fitted, path)
    digest = workflow.load_encoder(path).digest()  # as stored: a package carries the encoder as a graph
    last = fitted.history[-1] if fitted.history else {}
    summary = {
        "encoder": str(path),
        "model": model.source,
        "digest": digest,
        "steps": fitted.steps_done,
        "seconds": time.perf_counter() - t0,
        "latent_mse": last.get("latent_mse"),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        mse = "" if summary["latent_mse"] is None else f", latent MSE {summary['latent_mse']:.3f}"
        print(
            f"fitted an encoder for {model.source}: {fitted.steps_done} steps in {summary['seconds']:.1f} s{mse} "
            f"→ {path} (digest {digest[:12]}…)"
        )
    return EXIT_OK
