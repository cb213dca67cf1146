"""Option groups several commands share, and turning parsed options into workflow choices.

Inversion flags default to None ("not given"): the preset supplies the value when calibrating and the
calibration when attributing, and only a flag the user typed can contradict a calibration. Their help says
each preset's value, read from ``runtime.loop.settings.PRESETS``. Declaring the options imports no torch (``--help``
answers at once); turning them into a job imports the workflow.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genorigin.choices import SCHEDULE_FLAGS, SETTINGS_FLAGS, InversionChoices
from genorigin.errors import CliError
from genorigin.models import MODEL_KINDS
from genorigin.runtime.backends.registry import BACKENDS
from genorigin.runtime.loop.settings import OPTIMIZERS, PRESETS, ROBUST_MODES, FitSettings
from genorigin.runtime.methods.registry import METHODS, method_choices
from genorigin.threads import WORKERS_ENV, use_threads

if TYPE_CHECKING:
    from genorigin import workflow
    from genorigin.models import ResolvedModel

ENCODER_HELP = (
    "the encoder file the starts come from (default: the model's: shipped beside a bundled model, else in the "
    "user cache; <file>.encoder.pt; <package>/encoder.pt; <folder>/genorigin.encoder.pt)"
)


@dataclass(frozen=True)
class Flag:
    """One inversion flag: its dest is the InversionSettings or Schedule field it sets."""

    field: str
    help: str
    type: Any = int
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    metavar: str | None = None


SETTINGS = (
    Flag("steps", "optimiser steps per image"),
    Flag("lr", "Adam learning rate, unused by L-BFGS", float),
    Flag("restarts", "starts per image, the best counts"),
    Flag("halve_starts_at", "keep the better half of each image's starts at these steps", nargs="*", metavar="STEP"),
    Flag("loss", "per-pixel loss", str, ("mse", "l1")),
    Flag("optimizer", "per-slot optimiser", str, OPTIMIZERS),
    Flag("init", "where starts come from: the latent prior or the model's fitted encoder", str, ("prior", "encoder")),
    Flag("fresh_starts", "new starts an image gets when its loss stalls"),
    Flag(
        "robust",
        "robust mode: jpeg for JPEG'd inputs (calibrate on own samples through JPEG q50-95, 25 %% unmodified, "
        "and compare a block-DCT projection of the residual); platform for cropped and resized ones too (inputs "
        "at their own size, inverted through the platform's crop-and-resample, the window searched with the "
        "latent) (docs/robustness.md)",
        str,
        ROBUST_MODES,
    ),
)
SCHEDULE = (
    Flag("batch_size", "images in flight at once"),
    Flag("check_every", "steps between early-exit checkpoints"),
    Flag("exit_margin", "stop as non-belonging above this many times the belonging envelope", float),
    Flag("exit_envelope_rank", "the envelope is the k-th largest accepted calibration score at each step"),
    Flag("seed", "seed of the random starts"),
)


def add_model(p: argparse.ArgumentParser, what: str = "the model") -> None:
    p.add_argument("--model", required=True, help=f"{what}: {'; '.join(MODEL_KINDS.values())}")


def add_method(p: argparse.ArgumentParser) -> None:
    methods = "; ".join(f"{name}: {spec.help}" for name, spec in METHODS.items())
    p.add_argument(
        "--method",
        default="inversion",
        choices=method_choices(),
        metavar="METHOD",
        help=f"{methods}; inversion-random: the old name of inversion with --preset paper. At 512 px and above "
        "on a CPU only aedr (forward passes; with --backend torch-bf16: 7.8 s per image at 512 px on 2 AMX cores) is "
        "practical; the inversion methods need a GPU there "
        "(docs/large_models.md)",
    )
    p.add_argument(
        "--ddim-steps", type=int, default=50, help="DDIM/DDPM pipeline folders only: sampler steps K inverted through"
    )
    backends = "; ".join(f"{k.name}: {k.help}" for k in BACKENDS.values())
    p.add_argument(
        "--backend",
        default=None,
        choices=tuple(BACKENDS),
        metavar="BACKEND",
        help=f"{backends} (default: torch for PyTorch models, onnxruntime for packages)",
    )


def add_performance(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CPU use")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and ONNX Runtime (default: the CPUs this process may use ÷ --workers)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"how many genorigin processes share these CPUs (default: ${WORKERS_ENV}, else 1)",
    )


def _preset_help() -> str:
    parts = []
    for name, (s, _) in PRESETS.items():
        start = "encoder start" if s.init == "encoder" else "random starts"
        fresh = f", {s.fresh_starts} fresh start if stalled" if s.fresh_starts else ""
        parts.append(f"{name}: {s.steps} {s.optimizer} steps from {s.restarts} {start}{fresh}")
    return "; ".join(parts)


def _each(field: str, schedule: bool) -> str:
    values = [getattr(sch if schedule else s, field) for s, sch in PRESETS.values()]
    return ", ".join(f"{v if v != () else 'none'} ({name})" for v, name in zip(values, PRESETS))


def add_inversion(p: argparse.ArgumentParser, attributing: bool) -> None:
    """The preset, each setting and schedule flag, and --encoder. ``attributing``: defaults are the
    calibration's, and a setting flag may only repeat it."""
    g = p.add_argument_group(
        "inversion (a calibration is valid only for the settings it was made with"
        + ("; these default to the calibration's and may only repeat them)" if attributing else ")")
    )
    default = "the calibration's" if attributing else "fast"
    g.add_argument("--preset", choices=tuple(PRESETS), default=None, help=f"{_preset_help()} (default: {default})")
    for f in SETTINGS:
        follow = "; attributing: the calibration's" if attributing else ""
        _add_flag(g, f, SETTINGS_FLAGS[f.field], f"{_each(f.field, False)}{follow}")
    for f in SCHEDULE:
        grid = "; attributing: the calibration's grid" if attributing and f.field == "check_every" else ""
        _add_flag(g, f, SCHEDULE_FLAGS[f.field], f"{_each(f.field, True)}{grid}")
    g.add_argument("--encoder", type=Path, default=None, help=ENCODER_HELP)


def _add_flag(g: argparse._ArgumentGroup, f: Flag, option: str, default: str) -> None:
    options = [option, "--max-steps"] if f.field == "steps" else [option]
    g.add_argument(
        *options,
        dest=f.field,
        type=f.type,
        choices=f.choices,
        nargs=f.nargs,
        metavar=f.metavar,
        default=None,
        help=f"{f.help} (default: {default})",
    )


def add_fit(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder fit (when the preset starts from an encoder and the model has none yet)")
    g.add_argument("--fit-steps", type=int, default=FitSettings.steps, help="training steps of the encoder")
    g.add_argument(
        "--fit-seconds",
        type=float,
        default=None,
        help="stop fitting after this many seconds (default: no limit; the steps done are recorded)",
    )


def add_method_options(p: argparse.ArgumentParser, *, attributing: bool) -> None:
    """--method, --backend, the inversion group, (calibrating) the encoder fit, CPU use."""
    add_method(p)
    add_inversion(p, attributing)
    if not attributing:
        add_fit(p)
    add_performance(p)


def add_calibration_choice(p: argparse.ArgumentParser) -> None:
    """Which calibration decides, with which rule and level (attribute)."""
    p.add_argument("--calibration", action="append", default=[], metavar="[NAME=]PATH",
                   help="calibration file of a model (default: the model's own, for --method); NAME=PATH with "
                   "several models, repeatable")  # fmt: skip
    p.add_argument(
        "--rule",
        choices=["grubbs", "quantile"],
        default="grubbs",
        help="decision rule (inversion methods; AEDR always uses its KDE quantile)",
    )
    p.add_argument("--alpha", type=float, default=None, help="test level (default: the calibration's)")


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse, in one line and before any work, the numbers no run can use (only the options a command has)."""
    from genorigin.runtime.decide.calibration import MIN_SAMPLES

    limits = {
        "samples": (lambda v: v >= MIN_SAMPLES, f"at least {MIN_SAMPLES} (a calibration's test needs them)"),
        "alpha": (lambda v: 0.0 < v < 1.0, "between 0 and 1 (exclusive)"),
        "fit_steps": (lambda v: v >= 1, "at least 1"),
        "fit_seconds": (lambda v: v > 0, "more than 0"),
        "ddim_steps": (lambda v: v >= 1, "at least 1"),
        "threads": (lambda v: v >= 0, "at least 1 (0: the default)"),
        "workers": (lambda v: v >= 1, "at least 1"),
        "activation_budget": (lambda v: v > 0, "more than 0"),
    }
    for name, (ok, what) in limits.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise CliError(f"--{name.replace('_', '-')} must be {what}, got {value}")


def fit_settings(args: argparse.Namespace) -> FitSettings:
    try:
        return FitSettings(steps=args.fit_steps)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def method_choice(args: argparse.Namespace, threads: int | None, rule: str = "grubbs") -> workflow.MethodChoice:
    """The workflow's MethodChoice from parsed options (every command that builds a method has these)."""
    from genorigin import workflow

    return workflow.MethodChoice(
        method=args.method,
        inversion=InversionChoices.from_namespace(vars(args)),
        backend=args.backend,
        threads=threads,
        rule=rule,
        encoder=args.encoder,
    )


def configure_threads(args: argparse.Namespace) -> int:
    """Apply --threads/--workers to torch; the number goes to ONNX Runtime sessions too."""
    try:
        return use_threads(args.threads, args.workers)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def load_for_attribution(args: argparse.Namespace, spec: str, calibration: str | None, early_exit: bool = True
                         ) -> tuple[ResolvedModel, workflow.Loaded]:  # fmt: skip
    """Threads, the model ``spec``, and its method as ``calibration`` (None: the model's own) made it."""
    from genorigin import workflow

    threads = configure_threads(args)
    model = workflow.resolve(spec, args.ddim_steps, threads)
    choice = method_choice(args, threads, rule=args.rule)
    return model, workflow.method_for_attribution(
        model, choice, calibration=Path(calibration) if calibration else None, alpha=args.alpha, early_exit=early_exit
    )
