"""The fast preset's encoder on the command line: where it lives, fitted by calibrate when missing, fitted
ahead by fit-encoder, pinned by the calibration (a different one is a one-line error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genorigin.export.bundled import assets_dir
from genorigin.runtime.methods.encoder import FittedEncoder, OnnxEncoder
from tiny_models import write_own_pngs, write_tiny_dcgan

from genorigin.cli import main
from genorigin.files import cache_dir
from genorigin.models import resolve_model

FAST = ["--steps", "20", "--fit-steps", "3", "--samples", "4", "--threads", "1", "--quiet"]


@pytest.fixture()
def model(tmp_path) -> Path:
    return write_tiny_dcgan(tmp_path / "tiny.pt")


def test_encoder_locations_per_model_kind(model, tmp_path):
    assert resolve_model(str(model)).encoder_path == tmp_path / "tiny.pt.encoder.pt"
    bundled = resolve_model("dcgan_a")
    shipped = assets_dir() / "models" / "dcgan_a.encoder.pt"
    cached = cache_dir("encoders") / f"dcgan_a-{bundled.generator.fingerprint()[:12]}.encoder.pt"
    assert bundled.encoder_path == (shipped if shipped.exists() else cached)


def test_calibrate_fits_the_missing_encoder_and_pins_it(model, tmp_path, capsys):
    images = write_own_pngs(model, tmp_path / "in", 2)
    assert main(["calibrate", "--model", str(model), "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    encoder = tmp_path / "tiny.pt.encoder.pt"
    assert summary["encoder_fitted"] and summary["encoder"] == str(encoder)
    digest = FittedEncoder.load(encoder).digest()
    cal = json.loads((tmp_path / "tiny.pt.calibration.json").read_text())
    assert cal["encoder"] == digest and cal["settings"]["init"] == "encoder" and cal["settings"]["optimizer"] == "lbfgs"
    assert main(["attribute", *map(str, images), "--model", str(model), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoder"] == digest and report["encoder_path"] == str(encoder)

    # refit with another seed: the calibration no longer matches, in one line naming both
    assert main(["fit-encoder", "--model", str(model), "--steps", "3", "--quiet"]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main(["fit-encoder", "--model", str(model), "--steps", "3", "--seed", "1", "--force", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["attribute", *map(str, images), "--model", str(model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"calibrated with encoder {digest[:12]}" in err and str(encoder) in err


def test_fit_encoder_json_and_encoder_override(model, tmp_path, capsys):
    custom = tmp_path / "elsewhere" / "mine.pt"
    assert main(["fit-encoder", "--model", str(model), "--steps", "4", "--encoder", str(custom), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and summary["encoder"] == str(custom)
    assert summary["digest"] == FittedEncoder.load(custom).digest()
    assert main(["calibrate", "--model", str(model), "--encoder", str(custom), *FAST]) == 0
    assert not (tmp_path / "tiny.pt.encoder.pt").exists()  # the override was used, nothing fitted
    capsys.readouterr()
    image = write_own_pngs(model, tmp_path / "in", 1)[0]
    assert main(["attribute", str(image), "--model", str(model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "expected at" in err and "tiny.pt.encoder.pt" in err and "--encoder" in err
    assert main(["attribute", str(image), "--model", str(model), "--encoder", str(custom), "--quiet"]) == 0


def test_a_package_carries_its_encoder_as_a_graph(model, tmp_path, capsys):
    """An exported package (ONNX Runtime, no torch module): calibrate fits the encoder from the exported forward
    and attaches it as encoder.onnx (in the manifest, outside the model's identity); attribute starts from it."""
    package = tmp_path / "tiny.pkg"
    assert main(["export", "--model", str(model), "--out", str(package), "--quiet"]) == 0
    fingerprint = resolve_model(str(package)).generator.fingerprint()
    assert resolve_model(str(package)).encoder_path == package / "encoder.onnx"
    images = write_own_pngs(model, tmp_path / "in", 2)
    capsys.readouterr()
    assert main(["calibrate", "--model", str(package), "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((package / "manifest.json").read_text())
    assert summary["encoder_fitted"] and manifest["attachments"]["encoder"]["file"] == "encoder.onnx"
    digest = OnnxEncoder(package / "encoder.onnx").digest()
    assert json.loads((package / "calibration.json").read_text())["encoder"] == digest
    assert resolve_model(str(package)).generator.fingerprint() == fingerprint  # an attachment, not the model
    assert main(["attribute", *map(str, images), "--model", str(package), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoder"] == digest and [r["verdict"] for r in report["results"]] == ["belonging"] * 2
