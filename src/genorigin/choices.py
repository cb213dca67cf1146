"""Inversion settings from a preset, the user's explicit flags, and (when attributing) the calibration.

Calibrating: the preset (``fast`` unless ``--preset``), then each explicit flag on top. Attributing: the
settings the calibration recorded, since a threshold only holds for the loss it was measured with; an explicit
flag that contradicts them is refused in one line naming the flag and the calibration's value. Schedule flags
(batch size, checkpoints, seed, early-exit margins) never change a converged loss and are always taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from genorigin.runtime.loop.settings import InversionSettings, Schedule, default_schedule
from genorigin.runtime.robust.modes import robust_settings

# InversionSettings field → its flag, and the same for Schedule (the flags' dest is the field name)
SETTINGS_FLAGS = {
    "steps": "--steps",
    "lr": "--lr",
    "restarts": "--restarts",
    "halve_starts_at": "--halve-starts-at",
    "loss": "--loss",
    "optimizer": "--optimizer",
    "init": "--init",
    "fresh_starts": "--fresh-starts",
    "robust": "--robust",
}
SCHEDULE_FLAGS = {
    "batch_size": "--batch-size",
    "check_every": "--check-every",
    "seed": "--seed",
    "exit_margin": "--exit-margin",
    "exit_envelope_rank": "--exit-envelope-rank",
}
Presets = Mapping[str, tuple[InversionSettings, Schedule]]


class SettingsConflict(ValueError):
    """An explicit flag contradicts the calibration's settings."""


def flag_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) if value else "(none)"
    return str(value)


@dataclass(frozen=True)
class InversionChoices:
    """What the user asked for: a preset (None: not given) and the flags given explicitly, by field name."""

    preset: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    schedule: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_namespace(cls, values: Mapping[str, Any]) -> InversionChoices:
        """From parsed arguments whose inversion flags default to None (= not given)."""
        pick = lambda names: {k: values[k] for k in names if values.get(k) is not None}  # noqa: E731
        settings = pick(SETTINGS_FLAGS)
        if "halve_starts_at" in settings:
            settings["halve_starts_at"] = tuple(settings["halve_starts_at"])
        return cls(values.get("preset"), settings, pick(SCHEDULE_FLAGS))

    def given(self) -> list[str]:
        """The flags given (for refusing them where they do not apply)."""
        preset = ["--preset"] if self.preset else []
        return preset + [SETTINGS_FLAGS[k] for k in self.settings] + [SCHEDULE_FLAGS[k] for k in self.schedule]

    def applied(self, base: InversionSettings) -> InversionSettings:
        """``base`` with the explicit flags on top; ``--robust MODE`` last, as ``robust_settings`` turns it on
        (its transform family and its loss, so ``--loss`` beside it is refused)."""
        flags = dict(self.settings)
        mode = flags.pop("robust", "none")
        if mode != "none" and "loss" in flags:
            raise SettingsConflict(f"--robust {mode} sets the loss itself: drop --loss {flags['loss']}")
        return robust_settings(replace(base, **flags), mode)

    def for_calibration(self, presets: Presets, default: str) -> tuple[InversionSettings, Schedule]:
        """The preset's settings and schedule with the explicit flags on top."""
        base_settings, base_schedule = _preset(presets, self.preset or default)
        settings = self.applied(base_settings)
        same_procedure = (settings.init, settings.optimizer) == (base_settings.init, base_settings.optimizer)
        schedule = base_schedule if same_procedure else default_schedule(settings)
        return settings, replace(schedule, **self.schedule)

    def for_attribution(
        self, recorded: InversionSettings, presets: Presets, grid: int | None
    ) -> tuple[InversionSettings, Schedule]:
        """The calibration's settings (flags must agree with them); the schedule follows the calibration's
        checkpoint grid ``grid`` unless ``--check-every`` says otherwise."""
        for name, value in self.settings.items():
            if value != getattr(recorded, name):
                flag = SETTINGS_FLAGS[name]
                raise SettingsConflict(
                    f"{flag} {flag_value(value)} contradicts the calibration, made with {flag} "
                    f"{flag_value(getattr(recorded, name))}: drop the flag (attribution follows the calibration) "
                    f"or recalibrate with it"
                )
        if self.preset is not None:
            wanted = self.applied(_preset(presets, self.preset)[0])
            if wanted != recorded:
                differ = [
                    f"{SETTINGS_FLAGS.get(f.name, f.name)} {flag_value(getattr(recorded, f.name))}"
                    for f in fields(recorded)
                    if getattr(recorded, f.name) != getattr(wanted, f.name)
                ]
                raise SettingsConflict(
                    f"--preset {self.preset} contradicts the calibration, made with {', '.join(differ)}: drop "
                    f"--preset (attribution follows the calibration) or recalibrate with it"
                )
        schedule = default_schedule(recorded)
        if grid:
            schedule = replace(schedule, check_every=grid)
        return recorded, replace(schedule, **self.schedule)


def _preset(presets: Presets, name: str) -> tuple[InversionSettings, Schedule]:
    if name not in presets:
        raise ValueError(f"no preset {name!r} for this method (presets: {', '.join(presets)})")
    return presets[name]
