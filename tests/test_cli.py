"""The command line end to end on a bundled model: real files, real exit codes, nothing overwritten."""

import json
import shutil

import numpy as np
import pytest
from bad_images import write_bad_images
from genorigin.export.bundled import load_bundled, real_images_dir
from genorigin.runtime.decide.calibration import Calibration, quantize_8bit
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor

from genorigin.cli import main
from genorigin.images import load_rgb8, save_png

FAST = ["--preset", "paper", "--steps", "400", "--check-every", "50", "--batch-size", "8"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    cal = folder / "dcgan_a.calibration.json"
    assert main(["calibrate", "--model", "dcgan_a", "--samples", "8", "--out", str(cal), "--quiet", *FAST]) == 0
    return cal


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(quantize_8bit(load_bundled("dcgan_a").sample(2, seed=99))):
        save_png(img, folder / f"own_{i}.png")
    for p in sorted(real_images_dir().glob("*.png"))[:2]:
        shutil.copy(p, folder / f"real_{p.name}")
    return folder


def test_calibrate_json_and_refuses_overwrite(calibrated, capsys):
    data = json.loads(calibrated.read_text())
    assert data["model_name"] == "dcgan_a" and data["settings"]["steps"] == 400 and len(data["scores"]) == 8
    before = calibrated.read_bytes()
    assert main(["calibrate", "--model", "dcgan_a", "--samples", "8", "--out", str(calibrated), *FAST]) == 2
    assert "exists" in capsys.readouterr().err
    assert calibrated.read_bytes() == before


def test_attribute_json_report_and_bad_files(calibrated, image_folder, tmp_path, capsys):
    expected = write_bad_images(image_folder)
    report = tmp_path / "report.json"
    args = ["attribute", str(image_folder), "--model", "dcgan_a", "--calibration", str(calibrated), "--json",
            "--report", str(report), "--quiet", *FAST]  # fmt: skip
    assert main(args) == 1  # some inputs unreadable, the rest attributed
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed == json.loads(report.read_text())
    err_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == len(expected)
    for name in expected:
        assert sum(name in ln for ln in err_lines) == 1
    results = {r["source"].split("/")[-1]: r for r in printed["results"]}
    assert set(results) == {"own_0.png", "own_1.png", "real_real_000.png", "real_real_001.png"}
    own = max(results[f"own_{i}.png"]["loss"] for i in range(2))
    real = min(r["loss"] for k, r in results.items() if k.startswith("real"))
    assert own * 3 < real
    for r in printed["results"]:
        assert {
            "verdict",
            "loss",
            "calibrated_loss",
            "statistic",
            "critical_value",
            "p_value",
            "steps",
            "seconds",
        } <= set(r)
    # nothing is overwritten without --force
    before = report.read_bytes()
    assert main(args) == 2
    assert report.read_bytes() == before


def test_attribute_without_or_with_mismatched_calibration(calibrated, image_folder, capsys):
    assert main(["attribute", str(image_folder), "--model", "dcgan_a", "--quiet", *FAST]) == 2
    assert "genorigin calibrate" in capsys.readouterr().err
    args = ["attribute", str(image_folder), "--model", "dcgan_b", "--calibration", str(calibrated), *FAST]
    assert main(args) == 2
    assert "not this model" in capsys.readouterr().err
    args = ["attribute", str(image_folder), "--model", "dcgan_a", "--calibration", str(calibrated), "--steps", "300"]
    assert main(args) == 2  # issue 18: one line naming the flag and the calibration's value, not a raw dict
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps 300 contradicts the calibration, made with --steps 400" in err


def test_recon_dir_and_figure(calibrated, image_folder, tmp_path):
    recon, fig = tmp_path / "recon", tmp_path / "fig.png"
    args = ["attribute", str(image_folder), "--model", "dcgan_a", "--calibration", str(calibrated),
            "--recon-dir", str(recon), "--figure", str(fig), "--quiet", *FAST]  # fmt: skip
    assert main(args) == 0
    assert len(list(recon.glob("*.recon.png"))) == 4 and fig.stat().st_size > 10_000


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "8", "--per-class", "2", "--quiet", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["images"] == 8 and set(report["demo"]["per_class"]) == {
        "own-dcgan_a", "other-dcgan_b", "other-vae", "real"}  # fmt: skip
    assert (out / "figure.png").stat().st_size > 10_000
    assert "accuracy" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--quiet", *FAST]) == 2  # refuses a non-empty folder


@pytest.mark.parametrize(
    "options, message",
    [
        (["--halve-starts-at", "100", "50"], "halve_starts_at"),
        (["--steps", "0"], "steps"),
        (["--exit-margin", "0.5"], "exit margin"),
        (["--exit-envelope-rank", "0"], "envelope rank"),
    ],
)
def test_bad_inversion_options_fail_with_one_line_and_write_nothing(tmp_path, capsys, options, message):
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "dcgan_a", "--out", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_no_early_exit_reproduces_the_fixed_budget_and_records_why_each_image_stopped(calibrated, image_folder, capsys):
    base = ["attribute", str(image_folder), "--model", "dcgan_a", "--calibration", str(calibrated), "--json",
            "--quiet", "--max-steps", "400", "--check-every", "50", "--batch-size", "8"]  # fmt: skip
    assert main(base) == 0
    early = {r["source"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert main([*base, "--no-early-exit"]) == 0
    fixed = {r["source"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert all(r["steps"] == 400 and r["stop_reason"] == "budget" for r in fixed.values())
    assert {r["stop_reason"] for r in early.values()} <= {"belonging", "non-belonging", "budget"}
    assert sum(r["steps"] for r in early.values()) < sum(r["steps"] for r in fixed.values())
    # the same fixed budget through the Python API: bit-identical losses
    cal = Calibration.load(calibrated)
    gen = load_bundled("dcgan_a")
    att = Attributor(gen, settings=InversionSettings.from_dict(cal.settings), calibration=cal,
                     schedule=Schedule(batch_size=3, check_every=50, early_exit=False))  # fmt: skip
    sources = sorted(fixed)
    api = att.attribute(np.stack([gen.prepare_image(load_rgb8(s)) for s in sources]), sources)
    assert [r.loss for r in api] == [fixed[s]["loss"] for s in sources]
    assert [r.verdict for r in api] == [fixed[s]["verdict"] for s in sources]


@pytest.mark.slow
def test_demo_defaults_to_the_fast_preset_and_the_models_encoder(tmp_path, capsys):
    from genorigin.models import resolve_model

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--samples", "4", "--per-class", "1", "--fit-steps", "3", "--steps", "20",
            "--quiet", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 images: " in printed and "p-value" in printed and "called belonging" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["init"] == "encoder" and report["settings"]["optimizer"] == "lbfgs"
    assert report["encoder_path"] == str(resolve_model("dcgan_a").encoder_path) and report["encoder"]
    assert json.loads((out / "calibration.json").read_text())["encoder"] == report["encoder"]
