"""The decision for one image: its calibrated score tested against the calibration, with what audits it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from genorigin.runtime.decide.calibration import Calibration, calibrated_score
from genorigin.runtime.decide.decision import TestOutcome, grubbs_test, quantile_test
from genorigin.runtime.loop.outcome import InversionOutcome

DecisionRule = Literal["grubbs", "quantile"]


@dataclass
class AttributionResult:
    """The decision for one image, with everything needed to audit it."""

    source: str
    verdict: str  # "belonging", "non-belonging", "uncertain" (see ``readings``) or "error" (see ``error``)
    rule: str
    loss: float
    complexity: float
    calibrated_loss: float
    statistic: float
    critical_value: float
    p_value: float | None
    grubbs: dict[str, Any]
    quantile: dict[str, Any]
    steps: int
    stop_reason: str
    seconds: float
    evaluations: int = 0  # loss-and-gradient evaluations over all starts (the cost of the decision)
    restart_steps: list[int] = field(default_factory=list)  # steps at which a stalled image got fresh starts
    trajectory: list[tuple[int, float]] = field(default_factory=list)
    reconstruction: np.ndarray | None = None
    input: dict[str, Any] | None = None  # what was read and done to the file (ImageFacts.to_dict()), if from one
    warning: str | None = None  # the input lies outside what the calibration covers (runtime/robust/coverage.py)
    # the calibration's reproducibility band (relative, log scale) and, when the score's band straddles the
    # threshold, the verdicts at both ends and on this machine: another CPU may read it either way
    band: float | None = None
    readings: dict[str, str] | None = None
    error: str | None = None  # why no decision could be made for this image (verdict "error")
    geometry: dict[str, Any] | None = None  # platform mode: where the search placed the image (export/geometry.py)

    @property
    def belonging(self) -> bool:
        return self.verdict == "belonging"

    @property
    def fresh_starts(self) -> int:
        """Fresh starts the image was given when its trajectory stalled."""
        return len(self.restart_steps)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "reconstruction" and (k != "geometry" or v is not None)}
        d["trajectory"] = [[int(s), float(v)] for s, v in self.trajectory]
        d["fresh_starts"] = self.fresh_starts
        return d


NO_FINITE_LOSS = "the inversion found no finite loss: the model returned NaN or inf for every latent it tried"


def failed_result(o: InversionOutcome, source: str, comp: float, rule: str, error: str) -> AttributionResult:
    """The result of an image no decision could be made for: verdict ``error``, no score."""
    nan = float("nan")
    return AttributionResult(
        source=source, verdict="error", rule=rule, loss=nan, complexity=comp, calibrated_loss=nan, statistic=nan,
        critical_value=nan, p_value=None, grubbs={}, quantile={}, steps=o.steps, stop_reason=o.stop_reason,
        seconds=o.seconds, evaluations=o.evaluations, restart_steps=o.restart_steps, error=error,
    )  # fmt: skip


def verdict_word(belonging: bool) -> str:
    return "belonging" if belonging else "non-belonging"


def band_readings(cal: Calibration, rule: str, score: float) -> tuple[str, dict[str, str] | None]:
    """The verdict, and the readings at both ends of the score's reproducibility band when they differ.

    The band (``Calibration.band``, measured at calibration by replaying own samples under float32
    rounding perturbations) says how far another CPU's arithmetic may move a score: ``score·e^{±band}``.
    """
    here = verdict_word(bool(cal.accepts(score, rule)))
    if not cal.band:
        return here, None
    low = verdict_word(bool(cal.accepts(score * math.exp(-cal.band), rule)))
    high = verdict_word(bool(cal.accepts(score * math.exp(cal.band), rule)))
    if low == high:
        return here, None
    return "uncertain", {"this_machine": here, "low": low, "high": high}


def outcome_dict(o: TestOutcome) -> dict[str, Any]:
    return {
        "belonging": o.belonging,
        "statistic": o.statistic,
        "critical_value": o.critical_value,
        "p_value": o.p_value,
    }


def decide(
    cal: Calibration, rule: str, o: InversionOutcome, source: str, comp: float,
    reconstruction: np.ndarray | None = None,
) -> AttributionResult:  # fmt: skip
    """The decision for one inversion outcome: Grubbs and quantile tests on its calibrated score.

    A score whose reproducibility band (``Calibration.band``) straddles the threshold is ``uncertain``,
    with both readings. An image the inversion could not give a finite loss is that image's ``error``.
    """
    if not math.isfinite(o.best_loss):
        return failed_result(o, source, comp, rule, NO_FINITE_LOSS)
    score = float(calibrated_score(o.best_loss, comp))
    g = grubbs_test(score, cal.mean, cal.std, cal.n, cal.alpha)
    q = quantile_test(score, cal.quantile_threshold, np.asarray(cal.scores))
    primary = g if rule == "grubbs" else q
    verdict, readings = band_readings(cal, rule, score)
    return AttributionResult(
        source=source,
        verdict=verdict,
        band=cal.band,
        readings=readings,
        rule=rule,
        loss=o.best_loss,
        complexity=comp,
        calibrated_loss=score,
        statistic=primary.statistic,
        critical_value=primary.critical_value,
        p_value=primary.p_value,
        grubbs=outcome_dict(g),
        quantile=outcome_dict(q),
        steps=o.steps,
        stop_reason=o.stop_reason,
        evaluations=o.evaluations,
        restart_steps=o.restart_steps,
        seconds=o.seconds,
        trajectory=o.trajectory,
        reconstruction=reconstruction,
    )
