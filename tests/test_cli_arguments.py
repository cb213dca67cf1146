"""Arguments no run can use are refused before any work: one line, exit 2, nothing written.

"Before any work" is checked without timings: the model named does not exist, so a refusal that came after
the model was resolved would be about the model, not about the argument.
"""

import pytest

from genorigin.cli import main

MISSING = "/nonexistent/genorigin-model"


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "nonexistent" not in err  # the model was never looked at
    return err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--samples", "2"], "--samples must be at least 3"),
        (["--samples", "0"], "--samples must be at least 3"),
        (["--samples", "-5"], "--samples must be at least 3"),
        (["--alpha", "0"], "--alpha must be between 0 and 1"),
        (["--alpha", "1.5"], "--alpha must be between 0 and 1"),
        (["--fit-steps", "0"], "--fit-steps must be at least 1"),
        (["--fit-seconds", "-1"], "--fit-seconds must be more than 0"),
        (["--ddim-steps", "0"], "--ddim-steps must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--threads", "-2"], "--threads must be at least 1"),
        (["--steps", "0"], "steps and restarts must be ≥ 1"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--batch-size", "0"], "batch_size and check_every must be ≥ 1"),
        (["--halve-starts-at", "-3"], "halve_starts_at must be increasing steps ≥ 1"),
        (["--method", "aedr", "--steps", "5"], "--steps apply to inversion methods, not --method aedr"),
    ],
)
def test_calibrate_refuses_bad_arguments_before_the_model(capsys, tmp_path, flags, message):
    out = tmp_path / "cal.json"
    err = _refused(capsys, ["calibrate", "--model", MISSING, "--out", str(out), "--quiet", *flags])
    assert message in err
    assert not out.exists()


def test_attribute_refuses_bad_arguments_and_taken_outputs_before_the_model(capsys, tmp_path):
    assert "--alpha must be between 0 and 1" in _refused(
        capsys, ["attribute", "x.png", "--model", MISSING, "--alpha", "2"]
    )
    report = tmp_path / "report.json"
    report.write_text("{}")
    err = _refused(capsys, ["attribute", "x.png", "--model", MISSING, "--report", str(report)])
    assert "exists" in err and report.read_text() == "{}"


@pytest.mark.parametrize(
    "flags,message",
    [(["--ddim-steps", "0"], "--ddim-steps must be at least 1"),
     (["--activation-budget", "0"], "--activation-budget must be more than 0")],
)  # fmt: skip
def test_export_refuses_bad_arguments_before_the_model(capsys, tmp_path, flags, message):
    err = _refused(capsys, ["export", "--model", MISSING, "--out", str(tmp_path / "p.pkg"), *flags])
    assert message in err and not (tmp_path / "p.pkg").exists()


def test_a_good_calibration_still_runs(capsys, tmp_path):
    """The checks refuse only what no run can use: the smallest valid calibration goes through."""
    out = tmp_path / "cal.json"
    argv = ["calibrate", "--model", "dcgan_a", "--samples", "3", "--out", str(out), "--quiet"]
    assert main([*argv, "--preset", "paper", "--steps", "20", "--alpha", "0.1", "--fit-seconds", "5"]) == 0
    assert out.exists()
