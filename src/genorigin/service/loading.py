"""One served model: a model spec and its calibration → a checked, ready-to-stream Attributor.

The calibration file decides the inversion settings (it records them, and a threshold is only valid for the
loss it measured), so a server is never started with settings its calibration was not made with. Everything
a request would otherwise fail on — a missing or mismatched calibration, a calibration without checkpoint
scores (early exit cannot run), a missing encoder — fails here, at start-up, with one line naming the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genorigin.models import model_name
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.result import DecisionRule
from genorigin.runtime.loop.settings import Schedule
from genorigin.runtime.methods.attribution import Attributor

SERVED_METHOD = "inversion"  # the shared loop's method: what continuous batching runs
SCHEDULE_KEYS = ("check_every", "seed", "exit_margin", "exit_envelope_rank", "exit_min_step")


class ServiceLoadError(ValueError):
    """A model cannot be served as asked; the message names the file and the fix."""


@dataclass
class ServedModel:
    """A model the service answers for, under ``name``."""

    name: str
    source: str
    attributor: Attributor
    calibration_path: str | None = None

    @property
    def calibration(self) -> Calibration:
        cal = self.attributor.calibration
        assert cal is not None  # checked when loaded
        return cal

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model."""
        a, cal = self.attributor, self.calibration
        summary = cal.to_dict()["summary"] | {"alpha": cal.alpha, "path": self.calibration_path,
                                              "checkpoints": len(cal.checkpoint_steps)}  # fmt: skip
        return {
            "name": self.name,
            "source": self.source,
            "model": a.generator.describe(),
            "backend": a.backend.describe(),
            "method": a.method,
            "rule": a.rule,
            "settings": a.settings.to_dict(),
            "schedule": dataclasses.asdict(a.schedule),
            "encoder": a.encoder_digest,
            "calibration": summary,
        }


def check_servable(attributor: Attributor) -> None:
    """Refuse an attributor every request would fail on: no calibration, or early exit without checkpoints."""
    cal = attributor.calibration
    if cal is None:
        raise ServiceLoadError("the model has no calibration: run `genorigin calibrate` first")
    if attributor.settings.robust == "platform":
        raise ServiceLoadError(f"calibration of {cal.model_name!r} is in the platform mode, which inverts each input "
                               "size in its own loop: the service's continuous batching cannot serve it yet (use "
                               "genorigin attribute or the Python API)")  # fmt: skip
    if attributor.schedule.early_exit and not cal.checkpoint_steps:
        raise ServiceLoadError(f"calibration of {cal.model_name!r} has no checkpoint scores, so early exit cannot "
                               "run: recalibrate with this genorigin (`genorigin calibrate --force`)")  # fmt: skip
    try:
        attributor.stop_rule()
    except ValueError as exc:
        raise ServiceLoadError(f"calibration of {cal.model_name!r} is unusable for early exit: {exc}") from exc


def _schedule(base: Schedule, max_batch: int | None, overrides: Mapping[str, Any] | None) -> Schedule:
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(changes) - set(SCHEDULE_KEYS)
    if unknown:
        raise ServiceLoadError(f"unknown schedule settings {sorted(unknown)}")
    if max_batch is not None:
        changes["batch_size"] = max_batch
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise ServiceLoadError(str(exc)) from exc


def load_served_model(
    spec: str,
    calibration: str | Path | None = None,
    backend: str | None = None,
    threads: int | None = None,
    alpha: float | None = None,
    *,
    name: str | None = None,
    rule: DecisionRule = "grubbs",
    encoder: str | Path | None = None,
    max_batch: int | None = None,
    schedule: Mapping[str, Any] | None = None,
) -> ServedModel:
    """Resolve ``spec`` and load it as ``genorigin attribute`` does (``workflow.method_for_attribution``: the
    calibration's settings, its pinned encoder), then apply the service's schedule and check it.

    ``schedule``: overrides of the calibration's schedule (``SCHEDULE_KEYS``; None values keep it).
    """
    from genorigin.workflow import MethodChoice, WorkflowError, method_for_attribution, resolve

    choice = MethodChoice(method=SERVED_METHOD, backend=backend, threads=threads, rule=rule,
                          encoder=Path(encoder) if encoder is not None else None)  # fmt: skip
    try:
        model = resolve(spec, threads=threads)
        loaded = method_for_attribution(model, choice, calibration=Path(calibration) if calibration else None,
                                        alpha=alpha)  # fmt: skip
    except WorkflowError as exc:
        raise ServiceLoadError(str(exc)) from exc
    attributor = loaded.method
    if not isinstance(attributor, Attributor):  # continuous batching is the shared loop's
        raise ServiceLoadError(f"{spec}: method {attributor.method!r} cannot be served (the inversion method can)")
    attributor.schedule = _schedule(attributor.schedule, max_batch, schedule)
    check_servable(attributor)
    return ServedModel(name or model_name(spec), model.source, attributor, str(loaded.calibration_path))
