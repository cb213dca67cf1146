"""genorigin calibrate: invert N of the model's own samples and save their score distribution.

When the preset starts inversions from an encoder and the model has none yet, the encoder is fitted first
(progress shown; ``--fit-seconds`` caps it) and saved where the model's encoder lives; the calibration pins it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genorigin import workflow
from genorigin.commands import args as common
from genorigin.errors import EXIT_OK
from genorigin.outputs import OutputError, OutputPlan
from genorigin.progress import Progress
from genorigin.runtime.decide.calibration import Calibration


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model(p, "the model to calibrate")
    p.add_argument("--samples", type=int, default=100, help="own samples to calibrate on (N)")
    p.add_argument("--alpha", type=float, default=0.05, help="test level stored in the calibration")
    p.add_argument("--out", type=Path, help="calibration file (default: the model's: beside it, or the user cache)")
    p.add_argument("--force", action="store_true", help="replace an existing calibration file")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--quiet", action="store_true", help="no progress")
    common.add_method_options(p, attributing=False)


def fit_progress(total: int, quiet: bool) -> Progress:
    return Progress(total, "fitting encoder", "steps", quiet=quiet)


def save_calibration(cal: Calibration, out: Path) -> None:
    """Atomically; a full disk is one line (and no temp file), not a traceback."""
    try:
        cal.save(out, overwrite=True)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc


def run(args: argparse.Namespace) -> int:
    common.check_ranges(args)  # every argument that can be refused without the model, refused first
    fit = common.fit_settings(args)
    threads = common.configure_threads(args)
    choice = common.method_choice(args, threads)
    workflow.calibration_settings(choice)
    model = workflow.resolve(args.model, args.ddim_steps, threads)
    method = workflow.method_for_calibration(model, choice)
    out = args.out or model.calibration_file(method.method)
    enc_path = workflow.encoder_path(model, choice, method)
    fit_now = workflow.needs_fit(method, enc_path)
    plan = OutputPlan(files={"calibration": out} | ({"encoder": enc_path} if fit_now else {}))
    plan.check(args.force)  # before any compute: a taken or unwritable target costs nothing
    t0 = time.perf_counter()
    with fit_progress(fit.steps, args.quiet or not fit_now) as bar:
        fitted = workflow.prepare_encoder(
            method, enc_path, fit=fit, seconds=args.fit_seconds, on_step=lambda step, _: bar.update()
        )
    with Progress(args.samples, "calibrating", "samples", quiet=args.quiet) as bar:
        cal = method.calibrate(args.samples, alpha=args.alpha, on_done=lambda _: bar.update())
    save_calibration(cal, out)
    summary = {
        "calibration": str(out),
        "model": model.source,
        "method": method.method,
        "encoder": str(enc_path) if method.encoder_digest else None,
        "encoder_fitted": fitted,
        "seconds": time.perf_counter() - t0,
        **cal.to_dict()["summary"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return EXIT_OK
    print(f"calibrated {model.source} ({method.method}) on {cal.n} own samples in {summary['seconds']:.1f} s → {out}")
    if method.encoder_digest:
        print(f"  starts from encoder {method.encoder_digest[:12]}… ({'fitted now, ' if fitted else ''}{enc_path})")
    print(
        f"  score mean {cal.mean:.3e}, std {cal.std:.3e}; belonging up to {cal.grubbs_threshold:.3e} "
        f"(Grubbs, α={cal.alpha}), {cal.quantile_threshold:.3e} (quantile)"
    )
    return EXIT_OK
