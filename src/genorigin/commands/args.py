"""Option groups several commands share, and turning parsed options into workflow choices.

Inversion flags default to None ("not given"): the preset supplies the value when calibrating and the
calibration when attributing, and only a flag the user typed can contradict a calibration. Their help says
each preset's value, read from ``runtime.inversion.PRESETS``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genorigin.choices import InversionChoices
from genorigin.errors import CliError
from genorigin.models import MODEL_KINDS
from genorigin.runtime.backends import BACKENDS
from genorigin.runtime.encoder import FitSettings
from genorigin.runtime.inversion import OPTIMIZERS, PRESETS, Schedule
from genorigin.runtime.methods import METHODS, method_choices
from genorigin.threads import WORKERS_ENV, use_threads
from genorigin.workflow import MethodChoice

INVERSION_DEFAULT_PRESET = "fast"


def add_model(p: argparse.ArgumentParser, what: str = "the model") -> None:
    kinds = "; ".join(MODEL_KINDS.values())
    p.add_argument("--model", required=True, help=f"{what}: {kinds}")


def add_method(p: argparse.ArgumentParser) -> None:
    methods = "; ".join(f"{name}: {spec.help}" for name, spec in METHODS.items())
    p.add_argument(
        "--method",
        default="inversion",
        choices=method_choices(),
        metavar="METHOD",
        help=f"{methods}; inversion-random: the old name of inversion with --preset paper",
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


def _each(field: str, schedule: bool = False) -> str:
    values = [f"{getattr(sch if schedule else s, field)} ({name})" for name, (s, sch) in PRESETS.items()]
    return ", ".join(str(v).replace("()", "none") for v in values)


def add_inversion(p: argparse.ArgumentParser, attributing: bool) -> None:
    """``attributing``: the defaults come from the calibration, and flags must agree with it."""
    follow = "; attributing: the calibration's" if attributing else ""
    g = p.add_argument_group(
        "inversion (a calibration is valid only for the settings it was made with"
        + ("; these default to the calibration's and may only repeat them)" if attributing else ")")
    )
    default = "the calibration's" if attributing else INVERSION_DEFAULT_PRESET
    g.add_argument("--preset", choices=tuple(PRESETS), default=None, help=f"{_preset_help()} (default: {default})")
    g.add_argument(
        "--steps",
        "--max-steps",
        dest="steps",
        type=int,
        default=None,
        help=f"optimiser steps per image (default: {_each('steps')}{follow})",
    )
    g.add_argument(
        "--lr", type=float, default=None, help=f"Adam learning rate, unused by L-BFGS (default: {_each('lr')}{follow})"
    )
    g.add_argument(
        "--restarts",
        type=int,
        default=None,
        help=f"starts per image, the best counts (default: {_each('restarts')}{follow})",
    )
    g.add_argument(
        "--halve-starts-at",
        type=int,
        nargs="*",
        default=None,
        metavar="STEP",
        help=f"keep the better half of each image's starts at these steps (default: "
        f"{_each('halve_starts_at')}{follow})",
    )
    g.add_argument("--loss", choices=["mse", "l1"], default=None, help=f"default: {_each('loss')}{follow}")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default: {_each('optimizer')}{follow}")
    g.add_argument(
        "--init",
        choices=["prior", "encoder"],
        default=None,
        help=f"where starts come from: the latent prior or the model's fitted encoder (default: "
        f"{_each('init')}{follow})",
    )
    g.add_argument(
        "--fresh-starts",
        type=int,
        default=None,
        help=f"new starts an image gets when its loss stalls (default: {_each('fresh_starts')}{follow})",
    )
    g.add_argument(
        "--batch-size", type=int, default=None, help=f"images in flight at once (default: {_each('batch_size', True)})"
    )
    g.add_argument(
        "--check-every",
        type=int,
        default=None,
        help=f"steps between early-exit checkpoints (default: {_each('check_every', True)}"
        f"{'; attributing: the calibration grid' if attributing else ''})",
    )
    g.add_argument(
        "--exit-margin",
        type=float,
        default=None,
        help=f"stop as non-belonging above this many times the belonging envelope (default: {Schedule.exit_margin})",
    )
    g.add_argument(
        "--exit-envelope-rank",
        type=int,
        default=None,
        help="the envelope is the k-th largest accepted calibration score at each step (default: "
        f"{Schedule.exit_envelope_rank})",
    )
    g.add_argument("--seed", type=int, default=None, help=f"seed of the random starts (default: {Schedule.seed})")
    g.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="the encoder file the starts come from (default: the model's: shipped beside a bundled "
        "model or in the user cache; <file>.encoder.pt; <package>/encoder.pt; <folder>/genorigin.encoder.pt)",
    )


def add_fit(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder fit (when the preset starts from an encoder and the model has none yet)")
    g.add_argument("--fit-steps", type=int, default=FitSettings.steps, help="training steps of the encoder")
    g.add_argument(
        "--fit-seconds",
        type=float,
        default=None,
        help="stop fitting after this many seconds (the steps done are recorded)",
    )


def fit_settings(args: argparse.Namespace) -> FitSettings:
    try:
        return FitSettings(steps=args.fit_steps)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def method_choice(args: argparse.Namespace, threads: int | None, rule: str = "grubbs") -> MethodChoice:
    """The workflow's MethodChoice from parsed options (every command that builds a method has these)."""
    return MethodChoice(
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
