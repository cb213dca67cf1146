import json

import numpy as np
import pytest
from genorigin.runtime.decide.calibration import Calibration, CalibrationMismatch
from genorigin.runtime.loop.settings import InversionSettings
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator

SETTINGS = InversionSettings(steps=100, lr=0.05)


@pytest.fixture(scope="module")
def calibrated():
    gen = tiny_generator()
    return gen, Attributor(gen, settings=SETTINGS).calibrate(n=8)


def test_round_trip_and_contents(tmp_path, calibrated):
    gen, cal = calibrated
    path = cal.save(tmp_path / "c.json")
    loaded = Calibration.load(path, fingerprint=gen.fingerprint(), settings=SETTINGS.to_dict())
    assert loaded.scores == cal.scores and loaded.grubbs_threshold == pytest.approx(cal.grubbs_threshold)
    data = json.loads(path.read_text())
    assert data["model_fingerprint"] == gen.fingerprint()
    assert data["settings"]["steps"] == 100 and data["genorigin_version"]
    assert len(data["checkpoint_scores"]) == len(data["checkpoint_steps"]) == 2  # steps 50 and 100
    assert data["summary"]["n"] == 8


def test_rejects_another_model_and_other_settings(tmp_path, calibrated):
    _, cal = calibrated
    path = cal.save(tmp_path / "c.json")
    other = tiny_generator(seed=1)
    with pytest.raises(CalibrationMismatch, match="not this model"):
        Calibration.load(path, fingerprint=other.fingerprint())
    with pytest.raises(CalibrationMismatch, match="other inversion settings"):
        Calibration.load(path, settings=InversionSettings(steps=200, lr=0.05).to_dict())
    with pytest.raises(ValueError, match="calibration is for model"):
        Attributor(other, settings=SETTINGS, calibration=cal)


def test_refuses_overwrite_and_bad_files(tmp_path, calibrated):
    _, cal = calibrated
    path = cal.save(tmp_path / "c.json")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        cal.save(path)
    assert path.read_bytes() == before
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable calibration"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="not a genorigin calibration"):
        Calibration.load(tmp_path / "other.json")


def test_fingerprint_tracks_weights():
    a, b = tiny_generator(), tiny_generator()
    assert a.fingerprint() == b.fingerprint()
    with np.errstate(all="ignore"):
        b.module.inner.fc.bias.data += 1e-3
    b._fingerprint = None
    assert a.fingerprint() != b.fingerprint()


def _tampered(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["checkpoint_scores"][0].__setitem__(0, float("nan")), "finite and ≥ 0"),
        (lambda d: d["scores"].__setitem__(0, -1.0), "finite and ≥ 0"),
        (lambda d: d.update(scores=[d["scores"][0]] * len(d["scores"])), "no spread"),
        (lambda d: d.update(checkpoint_steps=d["checkpoint_steps"][:-1]), "budget is 100"),
        (lambda d: d.update(checkpoint_steps=[50, 50]), "increasing"),
        (lambda d: d["checkpoint_scores"][0].pop(), "samples, scores has 8"),
        (lambda d: d.update(checkpoint_scores=d["checkpoint_scores"][::-1]), "can only fall"),
        (lambda d: d.update(alpha="0.05"), "alpha"),
        (lambda d: d.update(scores="fast"), "list of numbers"),
    ],
)
def test_a_damaged_calibration_is_refused_in_one_line(tmp_path, calibrated, edit, message):
    _, cal = calibrated
    path = _tampered(cal.save(tmp_path / "c.json"), edit)
    with pytest.raises(ValueError, match=message) as err:
        Calibration.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_calibration_without_trajectories_keeps_only_the_exact_exit(calibrated):
    """Empty checkpoints crashed the early-exit rule; now the envelope is simply off."""
    import math

    from genorigin.runtime.decide.early_exit import TrajectoryStopRule

    _, cal = calibrated
    bare = Calibration(**{**cal.__dict__, "checkpoint_steps": [], "checkpoint_scores": []})
    rule = TrajectoryStopRule(bare, "grubbs")
    assert math.isinf(rule.reject_threshold(100))
    assert list(rule.check(100, np.array([0.0, 1e9]), np.ones(2))) == [1, 0]
