"""Which of several models made an image, or none: one rule over the per-model verdicts.

Each model tests the image against its own calibration (its own belonging distribution), so the per-model
verdicts are independent tests at each calibration's level α. Across models:

* no model accepts: none of them made it (``model`` is None);
* one model accepts: that model;
* several accept: the one whose own samples the image is most typical of, i.e. the largest p-value; ties (a
  Grubbs p-value saturates at 1 for scores below the calibration mean) go to the smallest statistic relative
  to its critical value, then to the model name, so the answer never depends on the order models are listed.

The service's ``model=all`` and the command line's multi-model ``attribute`` both call ``decide_across``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

RULE = (
    "each model tests the image against its own calibration; none accepting: none of them made it; one "
    "accepting: that model; several: the largest p-value, then the smallest statistic/critical value, then "
    "the model name"
)


class Verdict(Protocol):
    """What the rule reads of one model's result (``AttributionResult`` has it)."""

    @property
    def belonging(self) -> bool: ...

    p_value: float | None
    calibrated_loss: float
    statistic: float
    critical_value: float


@dataclass(frozen=True)
class ModelVerdict:
    """One model's part of the decision."""

    model: str
    belonging: bool
    p_value: float | None
    score: float  # the calibrated loss the test was run on
    statistic: float
    critical_value: float

    @property
    def margin(self) -> float:
        """Statistic over critical value: below 1 inside the acceptance region, smaller = more typical."""
        if self.critical_value == 0 or not math.isfinite(self.critical_value):
            return self.statistic
        return self.statistic / abs(self.critical_value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": "belonging" if self.belonging else "non-belonging",
            "p_value": self.p_value,
            "score": self.score,
            "statistic": self.statistic,
            "critical_value": self.critical_value,
        }


@dataclass(frozen=True)
class CrossModelDecision:
    """The answer across models: ``model`` made the image (None: none of them did)."""

    model: str | None
    accepting: tuple[str, ...]  # every model whose test accepted, in the rule's order (best first)
    verdicts: dict[str, ModelVerdict]
    rule: str = RULE

    @property
    def ambiguous(self) -> bool:
        """Several models accepted: the answer is the rule's choice among them."""
        return len(self.accepting) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.model,
            "verdict": "non-belonging" if self.model is None else "belonging",
            "accepting": list(self.accepting),
            "ambiguous": self.ambiguous,
            "rule": self.rule,
            "models": {name: v.to_dict() for name, v in self.verdicts.items()},
        }


def _verdict(name: str, r: Verdict) -> ModelVerdict:
    p = None if r.p_value is None else float(r.p_value)
    score, stat, crit = float(r.calibrated_loss), float(r.statistic), float(r.critical_value)
    return ModelVerdict(name, bool(r.belonging), p, score, stat, crit)


def _rank(v: ModelVerdict) -> tuple[float, float, str]:
    p = v.p_value if v.p_value is not None and math.isfinite(v.p_value) else -1.0
    return (-p, v.margin, v.model)


def decide_across(results_by_model: Mapping[str, Verdict]) -> CrossModelDecision:
    """The cross-model decision for one image from each model's result (see the module docstring)."""
    if not results_by_model:
        raise ValueError("decide_across needs at least one model's result")
    verdicts = {name: _verdict(name, r) for name, r in results_by_model.items()}
    accepting = tuple(v.model for v in sorted((v for v in verdicts.values() if v.belonging), key=_rank))
    return CrossModelDecision(accepting[0] if accepting else None, accepting, verdicts)
