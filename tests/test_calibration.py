import json

import numpy as np
import pytest
from genorigin.runtime.attribution import Attributor
from genorigin.runtime.calibration import Calibration, CalibrationMismatch
from genorigin.runtime.inversion import InversionSettings
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
