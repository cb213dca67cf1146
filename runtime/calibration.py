"""The per-model calibration: belonging statistics of the model's own samples, saved beside the model.

The file pins the model fingerprint, the inversion settings and the genorigin version it was made with, and
refuses to load for another model or other settings: a threshold is only meaningful for the loss it measured.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from genorigin.runtime.decision import empirical_threshold, grubbs_critical_value

from genorigin import __version__

CALIBRATION_FORMAT = "genorigin-calibration-v1"


class CalibrationMismatch(ValueError):
    """The calibration file was made for another model, other settings or another method."""


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
    method: str = "inversion-random"
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
    format: str = CALIBRATION_FORMAT

    def __post_init__(self) -> None:
        if len(self.scores) < 3:
            raise ValueError(f"a calibration needs at least 3 belonging samples, got {len(self.scores)}")
        if not all(math.isfinite(s) for s in self.scores):
            raise ValueError("calibration scores must be finite")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

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
        """Write atomically; refuse to replace an existing file unless asked."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        return path

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
        if fingerprint is not None and cal.model_fingerprint != fingerprint:
            raise CalibrationMismatch(
                f"{path}: calibration is for model {cal.model_name!r} "
                f"(fingerprint {cal.model_fingerprint[:12]}…), not this model ({fingerprint[:12]}…)"
            )
        if settings is not None and cal.settings != settings:
            keys = [*settings, *(k for k in cal.settings if k not in settings)]
            diff = {k: (cal.settings.get(k), settings.get(k)) for k in keys if cal.settings.get(k) != settings.get(k)}
            raise CalibrationMismatch(f"{path}: calibrated with other inversion settings (file, now): {diff}")
        if method is not None and cal.method != method:
            raise CalibrationMismatch(f"{path}: calibration method {cal.method!r}, asked for {method!r}")
        return cal
