"""The Python API README shows, on a tiny real generator: files in, results and one-line errors out; a path
to prepare_image; load-or-calibrate with the encoder saved once and the calibration reused."""

from __future__ import annotations

import numpy as np
import pytest
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import FAST_SETTINGS, FitSettings, InversionSettings
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator
from PIL import Image

from genorigin.images import ImageError, load_rgb8, save_png

SMALL_FAST = InversionSettings.from_dict({**FAST_SETTINGS.to_dict(), "steps": 30})


def test_prepare_image_takes_a_path(tmp_path):
    gen = tiny_generator()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    from_path = gen.prepare_image(tmp_path / "x.png")
    np.testing.assert_array_equal(from_path, gen.prepare_image(load_rgb8(tmp_path / "x.png")))
    np.testing.assert_array_equal(gen.prepare_image(str(tmp_path / "x.png")), from_path)
    (tmp_path / "y.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"y\.png: not an image"):
        gen.prepare_image(tmp_path / "y.png")


def test_load_or_calibrate_fits_and_saves_once_then_reuses(tmp_path):
    gen = tiny_generator()
    cal_path, enc_path = tmp_path / "cal.json", tmp_path / "enc.pt"
    first = Attributor(gen, settings=SMALL_FAST)
    cal = first.load_or_calibrate(cal_path, n=4, encoder_path=enc_path, fit=FitSettings(steps=3))
    assert cal_path.exists() and enc_path.exists() and cal.encoder == first.encoder_digest
    stamps = (cal_path.stat().st_mtime_ns, enc_path.stat().st_mtime_ns)
    again = Attributor(gen, settings=SMALL_FAST)
    loaded = again.load_or_calibrate(cal_path, n=4, encoder_path=enc_path, fit=FitSettings(steps=3))
    assert loaded.scores == cal.scores and again.encoder_digest == first.encoder_digest
    assert (cal_path.stat().st_mtime_ns, enc_path.stat().st_mtime_ns) == stamps  # nothing refitted or rewritten
    with pytest.raises(ValueError, match="other inversion settings"):
        Attributor(gen, settings=InversionSettings(steps=30)).load_or_calibrate(cal_path)


def test_attribute_files_gives_results_errors_and_notes(tmp_path):
    gen = tiny_generator()
    att = Attributor(gen, settings=InversionSettings(steps=40, lr=0.05))
    att.calibrate(4)
    for i, img in enumerate(quantize_8bit(gen.sample(2, seed=8))):
        save_png(img, tmp_path / f"own_{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "notes.tiff").write_bytes(b"II*\x00")
    found = att.attribute_files([str(tmp_path), str(tmp_path / "missing_*.png")])
    assert [r.source for r in found.results] == [str(tmp_path / "own_0.png"), str(tmp_path / "own_1.png")]
    assert len(found.errors) == 2 and any("broken.png" in e for e in found.errors)
    assert any("missing_*.png" in e for e in found.errors)
    assert any("notes.tiff" in n for n in found.skipped)
    assert all(r.input["source"] == r.source and r.input["format"] == "PNG" for r in found.results)
    assert found.images.shape == (2, 3, 8, 8)
