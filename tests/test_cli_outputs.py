"""Command-line outputs and inputs (issues 17 and 18) on a tiny real model: outputs checked before compute,
written atomically, never clobbered by two inputs; errors and notes on stderr; settings that follow the
calibration; the table, summary and CSV; progress lines in logs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import QUICK, write_own_pngs, write_tiny_dcgan

from genorigin.cli import join_negative_values, main


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny model file calibrated beside itself (paper preset, 20 steps)."""
    path = write_tiny_dcgan(tmp_path_factory.mktemp("tiny") / "tiny.pt")
    assert main(["calibrate", "--model", str(path), "--samples", "4", "--quiet", *QUICK]) == 0
    assert (path.parent / "tiny.pt.calibration.json").exists()
    return path


@pytest.fixture()
def inputs(model, tmp_path) -> Path:
    """Two own images with the same file name in two folders, and a real photo."""
    write_own_pngs(model, tmp_path / "in" / "a", 1, seed=1)
    write_own_pngs(model, tmp_path / "in" / "b", 1, seed=2)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
        tmp_path / "in" / "photo.png"
    )
    return tmp_path / "in"


def _attribute(model: Path, *args: str) -> list[str]:
    return ["attribute", *args, "--model", str(model), "--quiet", "--threads", "1"]


def test_same_stem_in_two_folders_gets_two_reconstructions(model, inputs, tmp_path, capsys):
    recon = tmp_path / "recon"
    spec = [str(inputs / "a"), str(inputs / "b"), str(inputs / "photo.png")]
    assert main([*_attribute(model, *spec), "--recon-dir", str(recon)]) == 0
    assert sorted(p.name for p in recon.iterdir()) == ["a_own_0.recon.png", "b_own_0.recon.png", "photo.recon.png"]
    a, b = (np.asarray(Image.open(recon / f"{x}_own_0.recon.png")) for x in "ab")
    assert not np.array_equal(a, b)  # each its own input's reconstruction, neither overwritten


def test_every_output_is_checked_before_the_compute(model, inputs, tmp_path, capsys):
    recon, report = tmp_path / "recon", tmp_path / "report.json"
    recon.mkdir()
    (recon / "photo.recon.png").write_bytes(b"keep me")
    args = [*_attribute(model, str(inputs / "photo.png")), "--recon-dir", str(recon), "--report", str(report)]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and "refusing to overwrite" in err and "photo.recon.png" in err  # no table: nothing computed
    assert not report.exists() and (recon / "photo.recon.png").read_bytes() == b"keep me"
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main([*_attribute(model, str(inputs / "photo.png")), "--csv", str(afile / "x.csv")]) == 2
    assert "afile is not a folder" in capsys.readouterr().err


def test_errors_and_notes_on_stderr_and_exit_code_one(model, inputs, capsys):
    (inputs / "bad.png").write_text("<html>not an image</html>")
    Image.new("RGB", (8, 8)).save(inputs / "anim.gif")
    assert main(_attribute(model, str(inputs))) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == [ln for ln in lines if "bad.png" in ln]
    assert any(ln.startswith("note:") and "anim.gif" in ln for ln in lines)
    assert re.search(r"^1 images: \d belonging, \d non-belonging; 1 unreadable; 1 skipped$", out, re.MULTILINE), out


def test_table_shows_the_tail_of_long_names_a_legend_and_a_summary(model, tmp_path, capsys):
    deep = tmp_path / ("a-very-long-folder-name-" * 3) / "the_file_that_matters.png"
    write_own_pngs(model, deep.parent, 1)
    (deep.parent / "own_0.png").rename(deep)
    assert main(_attribute(model, str(deep))) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if "the_file_that_matters.png" in ln)
    assert row.startswith("…")  # the tail, not the folders, is what stays visible
    assert "p-value" in out.splitlines()[0] and "score: inversion loss ÷ image complexity" in out
    assert "belonging if score ≤" in out and "calib." not in out and " G " not in out
    assert re.search(r"^1 images: \d belonging, \d non-belonging$", out, re.MULTILINE)


def test_csv_and_convert_white_recorded_in_the_result(model, tmp_path, capsys):
    rgba = tmp_path / "alpha.png"
    Image.fromarray(np.full((32, 32, 4), 128, np.uint8), "RGBA").save(rgba)
    assert main(_attribute(model, str(rgba))) == 2  # refused as is, nothing else to attribute
    assert "alpha channel" in capsys.readouterr().err
    table, report = tmp_path / "r.csv", tmp_path / "r.json"
    args = [*_attribute(model, str(rgba)), "--convert", "white", "--csv", str(table), "--report", str(report)]
    assert main(args) == 0
    # a conversion lies outside what the calibration covers: the warning below the table, in the CSV and the report
    assert any(ln.startswith("warning: ") and "alpha.png: converted (RGBA→RGB" in ln
               for ln in capsys.readouterr().out.splitlines())  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert len(rows) == 1 and rows[0]["conversion"] == "RGBA→RGB, alpha on white"
    assert rows[0]["warning"].startswith("converted (RGBA→RGB")
    result = json.loads(report.read_text())["results"][0]
    assert result["input"]["conversion"] == "RGBA→RGB, alpha on white" and result["evaluations"] > 0
    assert result["warning"] == rows[0]["warning"]
    assert json.loads(report.read_text())["skipped"] == []


def test_settings_follow_the_calibration(model, inputs, capsys):
    assert main([*_attribute(model, str(inputs / "photo.png")), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["steps"] == 20 and report["settings"]["optimizer"] == "adam"
    assert report["schedule"]["check_every"] == 10  # the calibration's checkpoint grid
    assert main([*_attribute(model, str(inputs / "photo.png")), "--steps", "20", "--preset", "paper"]) == 0
    capsys.readouterr()
    assert main([*_attribute(model, str(inputs / "photo.png")), "--preset", "fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--preset fast contradicts the calibration" in err
    assert "--steps 20" in err and "--optimizer adam" in err


def test_missing_model_folder_and_negative_output_range(tmp_path, capsys):
    assert main(["calibrate", "--model", str(tmp_path / "missing-folder")]) == 2
    assert "missing-folder does not exist" in capsys.readouterr().err
    assert join_negative_values(["--output-range", "-1,1", "-1"], ["--output-range"]) == ["--output-range=-1,1", "-1"]
    args = ["export", "--onnx", str(tmp_path / "nope.onnx"), "--output-range", "-1,1", "--out", str(tmp_path / "p")]
    assert main(args) == 2  # parsed: the failure is the missing file, not argparse
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "expected one argument" not in err


def _no_big_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_is_one_line_and_leaves_no_temp_file(model, inputs, tmp_path):
    """A file-size limit makes every write past 600 bytes fail as a full disk does (EFBIG, not ENOSPC)."""
    out = tmp_path / "cal"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "genorigin",
        "calibrate",
        "--model",
        str(model),
        "--samples",
        "4",
        "--out",
        str(out / "c.json"),
        "--quiet",
        *QUICK,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lambda: _no_big_files(600), timeout=600)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot write") and done.stderr.count("\n") == 1, done.stderr
    assert list(out.iterdir()) == []  # neither the calibration nor a *.tmp
    report = tmp_path / "rep" / "report.json"
    report.parent.mkdir()
    cmd = [sys.executable, "-m", "genorigin", *_attribute(model, str(inputs / "photo.png")), "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lambda: _no_big_files(600), timeout=600)
    assert done.returncode == 2 and "photo.png" in done.stdout  # the results were printed before the write failed
    assert done.stderr.startswith("error: cannot write") and list(report.parent.iterdir()) == []


def test_progress_lines_when_stderr_is_not_a_terminal(model, inputs):
    env = dict(os.environ, GENORIGIN_PROGRESS_SECONDS="0")
    spec = [str(inputs / "a"), str(inputs / "b"), str(inputs / "photo.png")]
    cmd = [sys.executable, "-m", "genorigin", "attribute", *spec, "--model", str(model), "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    duration = r"(\d+ s|[\d.]+ min|[\d.]+ h)"
    assert any(
        re.fullmatch(rf"attributing: [12]/3 images, [\d.e+-]+ images/s, ETA ({duration}|\?)", ln) for ln in lines
    ), lines
    assert re.fullmatch(rf"attributing: 3/3 images, [\d.e+-]+ images/s, done in {duration}", lines[-1]), lines
