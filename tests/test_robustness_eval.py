"""The robustness evaluation (genorigin.robustness_eval) and ``genorigin robustness`` (commands/robustness.py)."""

import argparse
import json

import numpy as np
import pytest
from genorigin.runtime.decide.calibration import Calibration, quantize_8bit
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator

from genorigin.commands import robustness as command
from genorigin.robustness_eval import evaluate_robustness, mode_settings, read

SETTINGS = InversionSettings(steps=100, lr=0.05, restarts=1, optimizer="lbfgs", fresh_starts=2, stall_window=20)
SCHEDULE = Schedule(batch_size=16, check_every=10, exit_min_step=30)  # stalled at the first exit, starts left


def test_read_counts_decisions_against_the_calibration():
    cal = Calibration("m", "f", {}, scores=[1.0, 1.1, 0.9, 1.0, 1.05, 0.95])  # Grubbs threshold ≈ 1.13
    r = read({"own": np.array([1.0, 1.0, 5.0]), "real": np.array([9.0, 0.5, 1.0])}, cal)
    assert r["fpr"] == pytest.approx(1 / 3) and r["tpr"] == {"real": pytest.approx(1 / 3)}
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["auc"]["real"] == pytest.approx(4 / 9)  # real > own: 9 beats three, 0.5 none; 1.0 ties two (½ each)


def test_modes_are_the_robust_mode_and_its_halves():
    assert mode_settings(SETTINGS, "plain") == SETTINGS
    assert (mode_settings(SETTINGS, "robust").loss, mode_settings(SETTINGS, "robust").robust) == ("mse-dct8", "jpeg")
    assert (mode_settings(SETTINGS, "calibration-only").loss, mode_settings(SETTINGS, "calibration-only").robust) \
        == ("mse", "jpeg")  # fmt: skip
    assert mode_settings(SETTINGS, "loss-only").robust == "none"
    with pytest.raises(ValueError, match="unknown mode"):
        mode_settings(SETTINGS, "webp")


def test_early_exit_reading_matches_a_live_early_exit_run():
    gen = tiny_generator()
    own = quantize_8bit(gen.sample(6, seed=3))
    real = np.random.default_rng(4).random((6, 3, 8, 8)).astype(np.float32)
    sets = {"own": own, "real": real}

    def make(settings, schedule):
        return Attributor(gen, settings=settings, schedule=schedule)

    report = evaluate_robustness(make, sets, base=SETTINGS, schedule=SCHEDULE, transforms=["jpeg80"],
                                 modes=["robust"], calibration_samples=10)  # fmt: skip
    reading = report["transforms"]["jpeg80"]["robust"]["early_exit"]
    robust = mode_settings(SETTINGS, "robust")
    att = make(robust, SCHEDULE)
    att.calibrate(10)
    from genorigin.runtime.robust.transforms import apply_transform

    live = att.attribute(np.concatenate([apply_transform("jpeg80", own, 0), apply_transform("jpeg80", real, 1)]))
    steps = {"own": np.mean([r.steps for r in live[:6]]), "real": np.mean([r.steps for r in live[6:]])}
    assert reading["mean_steps_per_class"] == pytest.approx(steps)
    assert reading["mean_steps"] < SETTINGS.steps  # the exit fired somewhere, or the check would be vacuous
    assert report["transforms"]["jpeg80"]["robust"]["restarted_per_class"]["real"] > 0  # and restarts mattered


def test_command_prints_every_transform_and_mode_and_writes_the_report(tmp_path, capsys):
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    out = tmp_path / "r.json"
    args = p.parse_args(["--model", "vae", "--n", "3", "--samples", "4", "--steps", "20", "--transforms", "none",
                         "jpeg80", "--quiet", "--report", str(out), "--figure", str(tmp_path / "f.png")])  # fmt: skip
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    rows = [line.split()[:2] for line in printed.splitlines()[3:]]
    assert rows == [["none", "plain"], ["none", "robust"], ["jpeg80", "plain"], ["jpeg80", "robust"]]
    report = json.loads(out.read_text())
    assert report["modes"]["robust"]["settings"]["robust"] == "jpeg"
    assert set(report["transforms"]["jpeg80"]["plain"]["early_exit"]) >= {"auc", "accuracy", "fpr", "tpr", "mean_steps"}
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_command_fails_cleanly_on_a_bad_model(capsys):
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    assert command.run(p.parse_args(["--model", "no_such_model", "--quiet"])) == 2
    assert "no_such_model" in capsys.readouterr().err
