"""The robust mode's calibration (runtime/robust/modes.py), the platform transforms (runtime/robust/transforms.py)
and the input-coverage warning (runtime/robust/coverage.py)."""

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from genorigin.export.bundled import load_bundled
from genorigin.runtime.decide.calibration import Calibration, CalibrationMismatch, quantize_8bit
from genorigin.runtime.loop.live import Job
from genorigin.runtime.loop.settings import FAST_SETTINGS, PRESETS, InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor, quantization_floor
from genorigin.runtime.robust.coverage import coverage_warning
from genorigin.runtime.robust.modes import robust_settings
from genorigin.runtime.robust.transforms import ROBUST_FAMILIES, TRANSFORMS, apply_transform
from helpers import tiny_generator
from PIL import Image

from genorigin.choices import InversionChoices, SettingsConflict
from genorigin.cli import build_parser
from genorigin.facts import ImageFacts
from genorigin.images import decode_upload
from genorigin.service.responses import model_answer

PLAIN = InversionSettings(steps=30, lr=0.05, restarts=1)
ROBUST = robust_settings(PLAIN, "jpeg")
SCHEDULE = Schedule(batch_size=8, check_every=10)


@pytest.fixture(scope="module")
def images():
    return quantize_8bit(load_bundled("dcgan_a").sample(4, seed=11))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transforms_are_deterministic_from_the_seed_and_8_bit(images, name):
    a = apply_transform(name, images, seed=3)
    assert a.dtype == np.float32 and (a.shape == images.shape) == TRANSFORMS[name].keeps_size
    assert np.array_equal(a, apply_transform(name, images, seed=3))
    assert np.abs(a * 255 - np.round(a * 255)).max() < 1e-4  # what an 8-bit file reads back as
    if name == "none":
        assert np.array_equal(a, images)
    else:
        assert a.shape != images.shape or not np.array_equal(a, images)
    other_seed = apply_transform(name, images, seed=4)
    assert np.array_equal(a, other_seed) == (not TRANSFORMS[name].draws)  # only noise and random cuts draw


def test_noise_has_the_asked_sigma_and_images_get_their_own_draws():
    flat = np.full((2, 3, 32, 32), 0.5, dtype=np.float32)
    out = apply_transform("noise3", flat, seed=0) * 255 - 127.5
    assert out.std() == pytest.approx(3.0, rel=0.05)
    assert not np.array_equal(out[0], out[1])


def test_jpeg_transform_writes_what_the_quality_estimator_reads(images):
    gen = load_bundled("dcgan_a")
    for q in (95, 90, 80, 70, 50):
        buf = io.BytesIO()
        pixels = np.round(images[0].transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(buf, format="JPEG", quality=q)  # the transform's own encoder call
        prepared, facts = decode_upload(buf.getvalue(), f"q{q}.jpg", gen)
        assert (facts.jpeg_quality, facts.jpeg_quality_error) == (q, 0.0)
        assert np.array_equal(prepared, apply_transform(f"jpeg{q}", images[:1])[0])


def test_family_draws_are_seeded_and_stay_in_range(images):
    fam = ROBUST_FAMILIES["jpeg"]
    many = np.repeat(images, 50, axis=0)
    a, names = fam.apply(many, seed=5)
    b, names_b = fam.apply(many, seed=5)
    assert names == names_b and np.array_equal(a, b)
    assert fam.apply(many, seed=6)[1] != names
    qualities = [int(n[4:]) for n in names if n != "none"]
    lo, hi = fam.jpeg_qualities
    assert min(qualities) >= lo and max(qualities) <= hi and len(set(qualities)) > 10
    assert names.count("none") / len(names) == pytest.approx(fam.identity_share, abs=0.08)


@pytest.fixture(scope="module")
def calibrations():
    gen = tiny_generator()
    plain = Attributor(gen, settings=PLAIN, schedule=SCHEDULE).calibrate(n=8)
    robust = Attributor(gen, settings=ROBUST, schedule=SCHEDULE).calibrate(n=8)
    return gen, plain, robust


def test_the_robust_setting_is_recorded(calibrations):
    gen, plain, robust = calibrations
    assert ROBUST.robust == "jpeg" and ROBUST.loss == "mse-dct8"
    assert robust.settings["robust"] == "jpeg" and robust.settings["loss"] == "mse-dct8"
    assert "robust" not in plain.settings  # a plain dict is the one made before the robust mode: still valid
    assert plain.transforms is None and len(robust.transforms) == 8
    expected = ROBUST_FAMILIES["jpeg"].apply(quantize_8bit(gen.sample(8, seed=robust.sample_seed)), robust.sample_seed)
    assert robust.transforms == expected[1]
    assert plain.stall_floor == quantization_floor("mse")
    assert robust.stall_floor > quantization_floor("mse-dct8", 3)  # raised by the compression error


def test_the_robust_setting_is_checked_against_the_calibration(tmp_path, calibrations):
    gen, plain, robust = calibrations
    with pytest.raises(ValueError, match="robust mode 'jpeg'"):
        Attributor(gen, settings=PLAIN, calibration=robust)
    with pytest.raises(ValueError, match="robust mode 'none'"):
        Attributor(gen, settings=ROBUST, calibration=plain)
    assert Attributor(gen, settings=ROBUST, calibration=robust).stall_floor() == robust.stall_floor
    path = robust.save(tmp_path / "r.json")
    with pytest.raises(CalibrationMismatch, match="'robust': \\('jpeg', None\\)"):
        Calibration.load(path, settings=PLAIN.to_dict())
    loaded = Calibration.load(path, settings=ROBUST.to_dict())
    assert loaded.transforms == robust.transforms and loaded.stall_floor == robust.stall_floor
    assert json.loads(path.read_text())["settings"]["robust"] == "jpeg"
    with pytest.raises(ValueError, match="robust must be one of"):
        InversionSettings(robust="webp")


def facts(fmt="PNG", size=(32, 32), quality=None, conversion=None) -> ImageFacts:
    f = ImageFacts("x", fmt, size[0], size[1], "RGB", 8, size, conversion=conversion, jpeg_quality=quality,
                   jpeg_quality_error=None if quality is None else 0.0)  # fmt: skip
    return f.prepared((32, 32))


def test_coverage_warning_names_what_the_calibration_does_not_cover(calibrations):
    _, plain, robust = calibrations
    assert coverage_warning(facts(), plain) is None and coverage_warning(facts(), robust) is None
    assert "--robust jpeg" in coverage_warning(facts("JPEG", quality=85), plain)
    assert coverage_warning(facts("JPEG", quality=85), robust) is None
    low = coverage_warning(facts("JPEG", quality=40), robust)
    assert "quality 40, below the robust calibration's range 50–95" in low
    assert "WebP" in coverage_warning(facts("WEBP"), robust)
    assert "upscaled ×2.00" in coverage_warning(facts(size=(16, 16)), plain)
    assert coverage_warning(facts(size=(64, 64)), plain) is None  # a moderate downscale of an upscaled output
    assert "downscaled ×0.12" in coverage_warning(facts(size=(256, 256)), plain)
    assert "not square (48×32)" in coverage_warning(facts(size=(48, 32)), plain)
    assert "RGBA→RGB" in coverage_warning(facts(conversion="RGBA→RGB, alpha on white"), plain)


def test_results_carry_the_input_and_the_warning_from_files_and_uploads(calibrations, tmp_path):
    """The command line's path (``attribute_files``) and the service's (``model_answer``) both put the facts
    into ``input`` and the coverage warning into ``warning``."""
    gen, plain, robust = calibrations
    pixels = np.round(quantize_8bit(gen.sample(1, seed=3))[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "own.png")
    Image.fromarray(pixels).save(tmp_path / "own.jpg", quality=90)
    att = Attributor(gen, settings=PLAIN, schedule=SCHEDULE, calibration=plain)
    assert att.attribute(quantize_8bit(gen.sample(1, seed=3)))[0].warning is None  # arrays: no facts, no warning
    png, jpeg = att.attribute_files([str(tmp_path / "own.png"), str(tmp_path / "own.jpg")]).results
    assert png.input["format"] == "PNG" and png.warning is None
    d = json.loads(json.dumps(jpeg.to_dict()))
    assert d["input"]["jpeg_quality"] == 90 and d["input"]["is_jpeg"] and "plain-mode calibration" in d["warning"]
    robust_att = Attributor(gen, settings=ROBUST, schedule=SCHEDULE, calibration=robust)
    assert robust_att.attribute_files([str(tmp_path / "own.jpg")]).results[0].warning is None  # q90 is covered

    result = att.attribute(quantize_8bit(gen.sample(1, seed=3)))[0]
    _, upload_facts = decode_upload((tmp_path / "own.jpg").read_bytes(), "own.jpg", gen)
    answer = model_answer("tiny", Job("own.jpg", deadline=0.0), result, upload_facts, plain)
    assert answer.status == 200 and answer.body["input"]["jpeg_quality"] == 90
    assert "plain-mode calibration" in answer.body["warning"]
    robust_answer = model_answer("tiny", Job("own.jpg", deadline=0.0), result, upload_facts, robust)
    assert robust_answer.body["warning"] is None


def test_the_robust_flag_turns_the_mode_on_and_must_agree_with_the_calibration():
    argv = ["calibrate", "--model", "dcgan_a", "--robust", "jpeg", "--steps", "30"]
    args = build_parser(["calibrate"]).parse_args(argv)
    choices = InversionChoices.from_namespace(vars(args))
    settings, _ = choices.for_calibration(PRESETS, "fast")
    assert settings == robust_settings(replace(FAST_SETTINGS, steps=30), "jpeg")  # the family and the loss
    with pytest.raises(SettingsConflict, match="--robust jpeg contradicts the calibration, made with --robust none"):
        choices.for_attribution(replace(FAST_SETTINGS, steps=30), PRESETS, None)
    recorded = robust_settings(FAST_SETTINGS, "jpeg")
    agreeing = InversionChoices.from_namespace({"preset": "fast", "robust": "jpeg"})
    assert agreeing.for_attribution(recorded, PRESETS, None)[0] == recorded
    with pytest.raises(SettingsConflict, match="made with --loss mse-dct8, --robust jpeg"):
        InversionChoices.from_namespace({"preset": "fast"}).for_attribution(recorded, PRESETS, None)
    with pytest.raises(SettingsConflict, match="drop --loss l1"):
        InversionChoices.from_namespace({"robust": "jpeg", "loss": "l1"}).for_calibration(PRESETS, "fast")
