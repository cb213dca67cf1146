"""The reproducibility band (issue 21): measured at calibration, recorded, and read at the decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.decide.reproducibility import band_from, band_indices, flip_last_bit
from genorigin.runtime.decide.result import band_readings
from genorigin.runtime.loop.outcome import BELONGING, CONTINUE
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator

pytestmark = pytest.mark.numeric


def _calibration(band: float | None) -> Calibration:
    scores = list(np.linspace(1e-5, 2e-5, 10))
    return Calibration(model_name="m", model_fingerprint="f", settings={}, scores=scores, band=band,
                       checkpoint_steps=[10, 20], checkpoint_scores=[[s * 4 for s in scores], scores])  # fmt: skip


def test_flip_last_bit_moves_every_element_by_one_ulp():
    a = np.array([1.0, -3.5, 1e-30, 7e20], np.float32)
    for flipped in (flip_last_bit(a), flip_last_bit(torch.from_numpy(a)).numpy()):
        up, down = np.nextafter(a, np.inf, dtype=np.float32), np.nextafter(a, -np.inf, dtype=np.float32)
        assert ((flipped == up) | (flipped == down)).all() and (flipped != a).all()


def test_band_is_the_largest_finite_log_ratio():
    assert band_from([1.0, 2.0, math.inf, 1.0], [1.1, 1.0, 3.0, 0.0]) == pytest.approx(math.log(2.0))
    assert band_from([], []) == 0.0
    assert list(band_indices(100, 4)) == [0, 33, 66, 99] and list(band_indices(3, 16)) == [0, 1, 2]


def test_a_score_whose_band_straddles_the_threshold_is_uncertain_with_both_readings():
    cal = _calibration(band=0.2)
    thr = cal.grubbs_threshold
    verdict, readings = band_readings(cal, "grubbs", thr * 0.95)
    assert verdict == "uncertain" and readings == {"this_machine": "belonging", "low": "belonging",
                                                   "high": "non-belonging"}  # fmt: skip
    assert band_readings(cal, "grubbs", thr * 1.1)[0] == "uncertain"
    assert band_readings(cal, "grubbs", thr * 0.5) == ("belonging", None)
    assert band_readings(cal, "grubbs", thr * 2.0) == ("non-belonging", None)
    assert band_readings(_calibration(band=None), "grubbs", thr * 0.95) == ("belonging", None)


def test_the_belonging_exit_waits_until_the_top_of_the_band_is_accepted():
    cal = _calibration(band=0.2)
    rule = TrajectoryStopRule(cal, "grubbs", min_step=10**9)
    thr = cal.grubbs_threshold
    out = rule.check(20, np.array([thr * 0.95, thr * math.exp(-0.2) * 0.999]), np.ones(2))
    assert list(out) == [CONTINUE, BELONGING]


@pytest.mark.parametrize("band", [-0.1, math.nan, math.inf, "wide"])
def test_a_calibration_with_a_bad_band_is_refused(band):
    with pytest.raises(ValueError, match="band"):
        _calibration(band)


def test_calibration_measures_and_records_the_band(tmp_path):
    gen = tiny_generator()
    att = Attributor(gen, settings=InversionSettings(steps=40, restarts=1), schedule=Schedule(check_every=10))
    cal = att.calibrate(5)
    assert cal.band_samples == 5 and cal.band is not None and math.isfinite(cal.band) and cal.band > 0
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json").band == cal.band
