"""The cross-model rule: which of several models made an image, or none."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from genorigin.runtime.decide.multimodel import RULE, decide_across


@dataclass
class R:
    belonging: bool
    p_value: float | None
    statistic: float = 0.0
    critical_value: float = 2.0
    calibrated_loss: float = 1e-3


def test_none_one_several():
    assert decide_across({"a": R(False, 0.001), "b": R(False, 0.01)}).model is None
    one = decide_across({"a": R(False, 0.001), "b": R(True, 0.4)})
    assert one.model == "b" and one.accepting == ("b",) and not one.ambiguous
    several = decide_across({"a": R(True, 0.2), "b": R(True, 0.6), "c": R(True, 0.4), "d": R(False, 0.0)})
    assert several.model == "b" and several.accepting == ("b", "c", "a") and several.ambiguous
    assert several.to_dict()["rule"] == RULE and several.to_dict()["verdict"] == "belonging"


def test_ties_and_order_do_not_change_the_answer():
    # Grubbs p-values saturate at 1 below the calibration mean: the smaller statistic/critical value wins, then the name
    results = {"x": R(True, 1.0, statistic=-0.5), "y": R(True, 1.0, statistic=-1.5), "z": R(True, 1.0, statistic=-1.5)}
    assert decide_across(results).accepting == ("y", "z", "x")
    assert decide_across(dict(reversed(results.items()))).accepting == ("y", "z", "x")
    assert decide_across({"a": R(True, None), "b": R(True, 0.01)}).model == "b"  # a known p-value beats none


def test_needs_a_result():
    with pytest.raises(ValueError):
        decide_across({})
