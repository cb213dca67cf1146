"""The per-model calibration: belonging statistics of the model's own samples, saved beside the model.

The file pins the model fingerprint, the inversion settings and the genorigin version it was made with, and
refuses to load for another model or other settings: a threshold is only meaningful for the loss it measured.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from genorigin.runtime.decide.decision import (
    empirical_threshold,
    grubbs_accepts,
    grubbs_critical_value,
    quantile_accepts,
)
from genorigin.runtime.loop.outcome import InversionOutcome

from genorigin import __version__
from genorigin.files import atomic_write_text

MIN_SAMPLES = 3  # own samples a calibration needs at least (Grubbs' test; refused before any work)

CALIBRATION_FORMAT = "genorigin-calibration-v1"
# files written before the shared loop's method was renamed "inversion" (it was "inversion-random")
LEGACY_METHODS = {"inversion-random": "inversion"}


def canonical_method(name: str) -> str:
    return LEGACY_METHODS.get(name, name)


class CalibrationMismatch(ValueError):
    """The calibration file was made for another model, other settings or another method."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_scores(values: Any, what: str) -> None:
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        raise ValueError(f"{what} must be a list of numbers")
    if not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise ValueError(f"{what} must be finite and ≥ 0 (a loss ÷ complexity), found {_first_bad(values)}")


def _first_bad(values: list[float]) -> float:
    return next(v for v in values if not (math.isfinite(v) and v >= 0.0))


def validate_fields(cal: Calibration) -> None:
    """The whole record, one line per problem: types, shapes, ranges, monotone trajectories.

    A calibration decides every verdict: a NaN, a negative score (which flips verdicts), scores with no spread
    (an infinite test statistic) or a trajectory table that does not match its steps (which silently changes
    early exit) must be refused at load, not discovered as a wrong answer.
    """
    for name in ("model_name", "model_fingerprint", "method", "score", "genorigin_version", "created", "format"):
        if not isinstance(getattr(cal, name), str):
            raise ValueError(f"field {name!r} must be a string")
    if not isinstance(cal.settings, dict):
        raise ValueError("field 'settings' must be an object")
    _check_scores(cal.scores, "scores")
    if len(cal.scores) < MIN_SAMPLES:
        raise ValueError(f"a calibration needs at least {MIN_SAMPLES} belonging samples, got {len(cal.scores)}")
    if max(cal.scores) == min(cal.scores):
        raise ValueError("calibration scores have no spread (all equal): the test statistic would be infinite")
    if not _is_number(cal.alpha) or not 0.0 < cal.alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {cal.alpha!r}")
    if not isinstance(cal.sample_seed, int) or not isinstance(cal.restarted, int) or cal.restarted < 0:
        raise ValueError("sample_seed and restarted must be integers (restarted ≥ 0)")
    if cal.encoder is not None and not isinstance(cal.encoder, str):
        raise ValueError("field 'encoder' must be a digest string or null")
    if cal.band is not None and not (_is_number(cal.band) and math.isfinite(cal.band) and cal.band >= 0.0):
        raise ValueError(f"band must be a finite number ≥ 0 or null, got {cal.band!r}")
    _validate_checkpoints(cal)


def _validate_checkpoints(cal: Calibration) -> None:
    steps, table = cal.checkpoint_steps, cal.checkpoint_scores
    if not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise ValueError("checkpoint_steps must be a list of integers")
    if not steps:  # no trajectories (a forward-only method): early exit keeps only its exact belonging exit
        if table:
            raise ValueError("checkpoint_scores given without checkpoint_steps")
        return
    if steps[0] < 1 or any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError("checkpoint_steps must be increasing steps ≥ 1")
    budget = cal.settings.get("steps")
    if isinstance(budget, int) and steps[-1] != budget:
        raise ValueError(f"checkpoint_steps end at {steps[-1]}, the settings' budget is {budget} (truncated?)")
    if not isinstance(table, list) or len(table) != len(steps):
        raise ValueError(f"checkpoint_scores must have one row per checkpoint step ({len(steps)})")
    for step, row in zip(steps, table):
        _check_scores(row, f"checkpoint_scores at step {step}")
        if len(row) != len(cal.scores):
            raise ValueError(f"checkpoint_scores at step {step} has {len(row)} samples, scores has {len(cal.scores)}")
    per_sample = np.asarray(table, dtype=np.float64)
    if (np.diff(per_sample, axis=0) > 1e-12 * np.maximum(per_sample[:-1], 1e-30)).any():
        raise ValueError("checkpoint_scores rise along the steps: best-so-far scores can only fall")
    if not np.allclose(per_sample[-1], cal.scores, rtol=1e-9, atol=0.0):
        raise ValueError("the last checkpoint's scores differ from the final scores")


def calibrated_score(loss: np.ndarray | float, complexity: np.ndarray | float) -> np.ndarray:
    """The test score: reconstruction loss divided by image complexity (2-D entropy, bits)."""
    return np.asarray(loss, dtype=np.float64) / np.asarray(complexity, dtype=np.float64)


@dataclass
class Calibration:
    """Belonging statistics of N of the model's own samples, and per-checkpoint ones for early exit."""

    model_name: str
    model_fingerprint: str
    settings: dict[str, Any]
    scores: list[float]
    alpha: float = 0.05
    method: str = "inversion"
    score: str = "loss/complexity"
    checkpoint_steps: list[int] = field(default_factory=list)
    checkpoint_scores: list[list[float]] = field(default_factory=list)
    genorigin_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sample_seed: int = 0
    encoder: str | None = None  # digest of the encoder whose starts the inversion used (settings.init="encoder")
    restarted: int = 0  # own samples whose stalled trajectory needed fresh starts
    transforms: list[str] | None = None  # robust mode: the transform each own sample went through
    stall_floor: float | None = None  # the loss the stall detector counts as converged (None: the 8-bit floor)
    # reproducibility band: the largest |log(score′/score)| of own samples replayed under float32 rounding
    # perturbations (another CPU's arithmetic); None: not measured (files written before it existed)
    band: float | None = None
    band_samples: int = 0
    format: str = CALIBRATION_FORMAT

    def __post_init__(self) -> None:
        validate_fields(self)
        self.method = canonical_method(self.method)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1))

    @property
    def grubbs_critical(self) -> float:
        return grubbs_critical_value(self.n, self.alpha)

    @property
    def grubbs_threshold(self) -> float:
        """The largest score Grubbs' test still accepts as belonging."""
        return self.mean + self.grubbs_critical * self.std

    @property
    def quantile_threshold(self) -> float:
        return empirical_threshold(np.asarray(self.scores), self.alpha)

    def threshold(self, rule: str) -> float:
        """The largest score ``rule`` ("grubbs" or "quantile") accepts, for display and figures."""
        return self.grubbs_threshold if rule == "grubbs" else self.quantile_threshold

    def accepts(self, scores: np.ndarray | float, rule: str) -> np.ndarray:
        """Which scores ``rule`` calls belonging: the verdict's own comparison (runtime/decide/decision.py)."""
        if rule == "grubbs":
            return grubbs_accepts(scores, self.mean, self.std, self.n, self.alpha)
        if rule == "quantile":
            return quantile_accepts(scores, self.quantile_threshold)
        raise ValueError(f"rule must be 'grubbs' or 'quantile', got {rule!r}")

    def with_alpha(self, alpha: float) -> Calibration:
        return Calibration(**{**asdict(self), "alpha": alpha})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "grubbs_critical": self.grubbs_critical,
            "grubbs_threshold": self.grubbs_threshold,
            "quantile_threshold": self.quantile_threshold,
        }
        return d

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write atomically (a full disk leaves the old file, or none, and no temp file); refuse to replace an
        existing file unless asked."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        fingerprint: str | None = None,
        settings: dict[str, Any] | None = None,
        method: str | None = None,
    ) -> Calibration:
        """Load and check that the file belongs to this model, these settings and this method."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable calibration file ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"{path}: not a genorigin calibration file (format {CALIBRATION_FORMAT!r})")
        data.pop("summary", None)
        try:
            cal = cls(**data)
        except TypeError as exc:
            raise ValueError(f"{path}: malformed calibration file ({exc})") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: invalid calibration file: {exc}") from exc
        if fingerprint is not None and cal.model_fingerprint != fingerprint:
            raise CalibrationMismatch(
                f"{path}: calibration is for model {cal.model_name!r} "
                f"(fingerprint {cal.model_fingerprint[:12]}…), not this model ({fingerprint[:12]}…)"
            )
        if settings is not None and cal.settings != settings:
            keys = [*settings, *(k for k in cal.settings if k not in settings)]
            diff = {k: (cal.settings.get(k), settings.get(k)) for k in keys if cal.settings.get(k) != settings.get(k)}
            raise CalibrationMismatch(f"{path}: calibrated with other inversion settings (file, now): {diff}")
        if method is not None and cal.method != canonical_method(method):
            raise CalibrationMismatch(f"{path}: calibration method {cal.method!r}, asked for {method!r}")
        return cal


CALIBRATION_SAMPLE_SEED = 1_000_003  # calibration samples never coincide with evaluation samples


def quantize_8bit(images: np.ndarray) -> np.ndarray:
    """What saving as PNG does to a generated image; calibration sees what attribution will see."""
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def scores_on_grid(outcomes: Sequence[InversionOutcome], grid: Sequence[int]) -> np.ndarray:
    """Best-so-far loss of each outcome at each grid step (N × steps), read off its trajectory."""
    out = np.full((len(outcomes), len(grid)), np.inf)
    for i, o in enumerate(outcomes):
        steps = np.array([s for s, _ in o.trajectory])
        values = np.array([v for _, v in o.trajectory])
        idx = np.searchsorted(steps, grid, side="right") - 1
        out[i] = np.where(idx >= 0, values[np.maximum(idx, 0)], np.inf)
    return out
