"""The job, step by step, for every front end (command line, demo, the HTTP service's loading path):
resolve the model → build the method with its encoder and calibration → read images → run → report.

Nothing here parses arguments or prints. Every failure a user can fix (a missing model, calibration or
encoder, contradicting settings) is one ``WorkflowError`` line; the command line turns it into exit 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genorigin import __version__
from genorigin.choices import InversionChoices
from genorigin.decode import Background
from genorigin.errors import GenoriginError
from genorigin.images import Preparer, ReadResult, read_images
from genorigin.models import ResolvedModel, resolve_model
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.loop.settings import FitSettings, InversionSettings, Schedule
from genorigin.runtime.methods.files import FileAttribution, attribute_read
from genorigin.runtime.methods.registry import (
    AttributionMethod,
    MethodOptions,
    MethodSpec,
    build_method,
    resolve_method,
)

if TYPE_CHECKING:  # torch (and, for packages, ONNX) are imported by the steps that use them, not by importing this
    from genorigin.runtime.decide.result import AttributionResult
    from genorigin.runtime.methods.encoder import Encoder, FittedEncoder


class WorkflowError(GenoriginError):
    """Nothing could be done: a one-line reason naming what to fix."""


@dataclass(frozen=True)
class MethodChoice:
    """Which method, on which backend, with which settings and encoder (as the user asked)."""

    method: str = "inversion"
    inversion: InversionChoices = field(default_factory=InversionChoices)
    backend: str | None = None
    threads: int | None = None
    rule: str = "grubbs"
    encoder: Path | None = None  # --encoder: overrides where the model's encoder lives


@dataclass
class Loaded:
    """A method ready to attribute: calibration in, encoder (if any) in."""

    method: AttributionMethod
    calibration: Calibration
    calibration_path: Path
    encoder_path: Path | None


def resolve(spec: str, ddim_steps: int = 50, threads: int | None = None) -> ResolvedModel:
    """``resolve_model`` with its failures as one line."""
    try:
        return resolve_model(spec, ddim_steps=ddim_steps, threads=threads)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise WorkflowError(str(exc).strip("'\"")) from exc


def _spec(choice: MethodChoice) -> tuple[MethodSpec, str | None]:
    try:
        return resolve_method(choice.method)
    except ValueError as exc:
        raise WorkflowError(str(exc)) from exc


def _refuse_inversion_flags(spec: MethodSpec, choice: MethodChoice) -> None:
    given = choice.inversion.given()
    if given:
        raise WorkflowError(f"{', '.join(given)} apply to inversion methods, not --method {spec.name}")


def _build(model: ResolvedModel, spec: MethodSpec, choice: MethodChoice, **options: Any) -> AttributionMethod:
    try:
        options = {"backend": choice.backend, "threads": choice.threads, "rule": choice.rule, **options}
        return build_method(spec.name, model, MethodOptions(**options))
    except (ValueError, RuntimeError, ImportError) as exc:
        raise WorkflowError(str(exc)) from exc


def method_for_calibration(model: ResolvedModel, choice: MethodChoice) -> AttributionMethod:
    """The method with the preset's settings and the explicit flags on top (calibration makes the record)."""
    spec, settings = calibration_settings(choice)
    if settings is None:
        return _build(model, spec, choice)
    return _build(model, spec, choice, settings=settings[0], schedule=settings[1])


def calibration_settings(choice: MethodChoice) -> tuple[MethodSpec, tuple[InversionSettings, Schedule] | None]:
    """The method and (for an inverting one) its settings, checked without the model: a bad flag is refused
    before anything is loaded or computed."""
    spec, alias_preset = _spec(choice)
    if not spec.inverts:
        _refuse_inversion_flags(spec, choice)
        return spec, None
    try:
        return spec, choice.inversion.for_calibration(spec.presets, alias_preset or spec.default_preset or "")
    except ValueError as exc:
        raise WorkflowError(str(exc)) from exc


def encoder_path(model: ResolvedModel, choice: MethodChoice, method: AttributionMethod | None = None) -> Path:
    """Where the model's encoder is read from and saved to (``--encoder`` wins); the platform mode's is its
    platform encoder, beside the model's (runtime/methods/platform_encoder.py)."""
    if choice.encoder is not None:
        return choice.encoder
    if method is not None and method.settings.to_dict().get("robust") == "platform":
        from genorigin.runtime.methods.platform_encoder import platform_encoder_path

        return platform_encoder_path(model.encoder_path)
    return model.encoder_path


def load_encoder(path: Path) -> Encoder:
    """A fitted torch encoder (``.pt``), or an encoder graph (``.onnx``, how a package carries it)."""
    from genorigin.runtime.methods.encoder_files import EncoderFileError, read_encoder

    try:
        return read_encoder(path)
    except EncoderFileError as exc:
        raise WorkflowError(str(exc)) from exc


def needs_fit(method: AttributionMethod, path: Path) -> bool:
    """The method starts from an encoder and none is at ``path`` yet."""
    return method.needs_encoder and not path.exists()


def prepare_encoder(
    method: AttributionMethod,
    path: Path,
    *,
    fit: FitSettings,
    seconds: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> bool:
    """``runtime.methods.encoder_files.prepare_encoder``: the encoder at ``path`` read, or fitted and written
    there; a file problem is one ``WorkflowError`` line. Returns whether one was fitted."""
    from genorigin.runtime.methods import encoder_files

    try:
        return encoder_files.prepare_encoder(method, path, fit=fit, seconds=seconds, on_step=on_step)
    except encoder_files.EncoderFileError as exc:
        raise WorkflowError(str(exc)) from exc


def save_encoder(fitted: FittedEncoder, path: Path) -> None:
    """Atomically: the weights (``.pt``), or the graph (``.onnx``; into a package's manifest when it is one)."""
    from genorigin.runtime.methods.encoder_files import EncoderFileError, write_encoder

    try:
        write_encoder(fitted, path)
    except EncoderFileError as exc:
        raise WorkflowError(str(exc)) from exc


def method_for_attribution(
    model: ResolvedModel,
    choice: MethodChoice,
    *,
    calibration: Path | None = None,
    alpha: float | None = None,
    early_exit: bool = True,
) -> Loaded:
    """The method as the calibration made it: its settings (explicit flags must agree), its encoder, its alpha
    unless ``alpha`` overrides."""
    spec, _ = _spec(choice)
    path = calibration or model.calibration_file(spec.name)
    if not path.exists():
        raise WorkflowError(
            f"no calibration at {path}: run `genorigin calibrate --model {model.source.split(':')[-1]}"
            f"{'' if spec.name == 'inversion' else ' --method ' + spec.name}` first"
        )
    try:
        cal = Calibration.load(path, fingerprint=model.generator.fingerprint(), method=spec.name)
        cal = cal.with_alpha(alpha) if alpha is not None else cal
    except ValueError as exc:
        raise WorkflowError(str(exc)) from exc
    options: dict[str, Any] = {}
    if spec.inverts:
        try:
            settings, schedule = choice.inversion.for_attribution(
                InversionSettings.from_dict(cal.settings),
                spec.presets,
                cal.checkpoint_steps[0] if cal.checkpoint_steps else None,
            )
        except (ValueError, TypeError) as exc:
            raise WorkflowError(f"{path}: {exc}") from exc
        options = {"settings": settings, "schedule": replace(schedule, early_exit=early_exit)}
    else:
        _refuse_inversion_flags(spec, choice)
    method = _build(model, spec, choice, **options)
    enc_path = _attach_encoder(method, cal, path, encoder_path(model, choice, method)) if method.needs_encoder else None
    try:
        method.use_calibration(cal)
    except ValueError as exc:
        raise WorkflowError(f"{path}: {exc}") from exc
    return Loaded(method, cal, path, enc_path)


def _attach_encoder(method: AttributionMethod, cal: Calibration, cal_path: Path, path: Path) -> Path:
    """The calibration pins its encoder: the one at ``path`` must be it."""
    pinned = str(cal.encoder)[:12]
    if not path.exists():
        raise WorkflowError(
            f"{cal_path} starts inversions from encoder {pinned}…, expected at {path}, which does "
            "not exist: pass --encoder FILE, or recalibrate"
        )
    encoder = load_encoder(path)
    if encoder.digest() != cal.encoder:
        raise WorkflowError(
            f"{cal_path} was calibrated with encoder {pinned}…, but {path} is encoder "
            f"{encoder.digest()[:12]}…: recalibrate (calibrate --force), or pass --encoder with "
            "the calibration's encoder"
        )
    method.use_encoder(encoder)
    return path


def read(model: ResolvedModel, specs: Sequence[str], convert: Background | None = None,
         reader: Preparer | None = None) -> ReadResult:  # fmt: skip
    """Expand and read the inputs for this model (``genorigin.images.read_images``); ``reader``: the method's
    (``AttributionMethod.reader``; default the model's generator, which brings inputs to its size)."""
    try:
        return read_images(list(specs), reader or model.generator, convert=convert)
    except ValueError as exc:
        raise WorkflowError(str(exc)) from exc


# attribute what ``read`` gave; each result carries its input's facts (the same path as ``attribute_files``)
run = attribute_read


def build_report(model: ResolvedModel, loaded: Loaded, found: FileAttribution) -> dict[str, Any]:
    """The JSON report: model, method (backend, settings, schedule), calibration summary, results, errors."""
    cal = loaded.calibration
    described = loaded.method.describe()
    results: list[AttributionResult] = found.results
    return {
        "genorigin_version": __version__,
        "model": model.generator.describe() | {"source": model.source},
        **described,
        "calibration": {k: v for k, v in cal.to_dict().items() if k not in ("scores", "checkpoint_scores")}
        | {"path": str(loaded.calibration_path)},
        "encoder_path": None if loaded.encoder_path is None else str(loaded.encoder_path),
        "results": [r.to_dict() for r in results],
        "errors": list(found.errors),
        "skipped": list(found.skipped),
        "summary": {
            "images": len(results),
            "belonging": sum(r.belonging for r in results),
            "non_belonging": sum(not r.belonging for r in results),
            "unreadable": len(found.errors),
            "skipped": len(found.skipped),
            "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0,
            "mean_evaluations": float(np.mean([r.evaluations for r in results])) if results else 0.0,
        },
    }
