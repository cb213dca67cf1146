"""Where does attribution break under what platforms do to images, and does the robust mode hold? (issue 13)

``evaluate_robustness`` calibrates the model once per mode, passes own samples and non-belonging images
through every transform (runtime/robust/transforms.py), inverts each set to the full budget with trajectories, and
reads, per transform and mode: AUC of own against each non-belonging class, and accuracy, FPR (own called
non-belonging) and TPR (non-belonging caught) at the calibration's α with Grubbs' test — both at the full
budget and at the early exit the live loop would take (replayed on the trajectory with the loop's own rules,
as benchmarks/eval_fast.py does), with its mean steps.

Modes (``mode_settings``): ``plain`` (the base settings), ``robust`` (runtime/robust/modes.py: the family's
calibration and the projection loss) and the two halves apart, ``calibration-only`` (a) and ``loss-only``
(b), and ``platform`` (runtime/methods/platform.py: images at their own size, inverted through the platform's
geometry). Modes sharing a loss and an input size share the inversions of the evaluation images: the run of
the mode listed first (its calibration's stall floor), read against each mode's own calibration. The modes
that take the model's size get a transform's output the way a file is read (``Generator.prepare_image``:
centre square, LANCZOS), the platform mode as it is.

The benchmark (benchmarks/eval_robustness.py) and ``genorigin robustness`` both call this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.decision import grubbs_test
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.outcome import Decision
from genorigin.runtime.loop.restarts import StallDetector, may_restart, stop_reason
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.robust.modes import EVALUATION_MODES as MODES
from genorigin.runtime.robust.modes import ROBUST_LOSS, robust_settings
from genorigin.runtime.robust.transforms import apply_transform, transform_names

Progress = Callable[[str], None]


def mode_settings(base: InversionSettings, mode: str) -> InversionSettings:
    """The settings of one evaluated mode, from the plain ``base``."""
    if mode == "plain":
        return base
    if mode == "robust":
        return robust_settings(base, "jpeg")
    if mode == "calibration-only":
        return replace(base, robust="jpeg")
    if mode == "loss-only":
        return replace(base, loss=ROBUST_LOSS["jpeg"])
    if mode == "platform":
        return robust_settings(base, "platform")
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def auc(non_belonging: np.ndarray, own: np.ndarray) -> float:
    """P(a non-belonging score > an own score), ties counted half (Mann–Whitney)."""
    neg, pos = np.asarray(non_belonging)[None, :], np.asarray(own)[:, None]
    return float((neg > pos).mean() + 0.5 * (neg == pos).mean())


def exit_point(r: AttributionResult, rule: TrajectoryStopRule, settings: InversionSettings,
               stall: StallDetector) -> tuple[float, int]:  # fmt: skip
    """(score, step) at which the live loop would stop this image: its rules replayed on the trajectory."""
    for k, (step, loss) in enumerate(r.trajectory):
        decision = Decision(int(rule.check(step, np.array([loss]), np.array([r.complexity]))[0]))
        restartable = may_restart(r.trajectory[: k + 1], [s for s in r.restart_steps if s < step], settings, stall)
        if stop_reason(decision, step, settings, restartable) is not None:
            return loss / r.complexity, step
    return r.calibrated_loss, r.steps


def evaluations_at(r: AttributionResult, step: int, settings: InversionSettings) -> int:
    """Gradient evaluations the live loop spends on this image when it stops at ``step``: its starts (with
    successive halving) plus the fresh starts it got before then."""
    fresh = sum(settings.restarts * (step - s) for s in r.restart_steps if s < step)
    return settings.start_steps(step) + fresh


def read(scores: dict[str, np.ndarray], cal: Calibration) -> dict[str, Any]:
    """AUC per non-belonging class, and Grubbs' decisions at the calibration's α: accuracy, FPR, TPR."""
    belongs = {k: np.array([grubbs_test(s, cal.mean, cal.std, cal.n, cal.alpha).belonging for s in v])
               for k, v in scores.items()}  # fmt: skip
    others = [k for k in scores if k != "own"]
    correct = belongs["own"].sum() + sum((~belongs[k]).sum() for k in others)
    return {
        "auc": {k: auc(scores[k], scores["own"]) for k in others},
        "accuracy": float(correct / sum(len(v) for v in scores.values())),
        "fpr": float((~belongs["own"]).mean()),
        "tpr": {k: float((~belongs[k]).mean()) for k in others},
    }


def read_mode(results: dict[str, list[AttributionResult]], cal: Calibration, settings: InversionSettings,
              schedule: Schedule, stall_floor: float) -> dict[str, Any]:  # fmt: skip
    """One mode's reading of one transform's full-budget results: full budget, then early exit."""
    full = read({k: np.array([r.calibrated_loss for r in v]) for k, v in results.items()}, cal)
    rule = TrajectoryStopRule(cal, "grubbs", margin=schedule.exit_margin, min_step=schedule.exit_min_step,
                              envelope_rank=schedule.exit_envelope_rank)  # fmt: skip
    stall = StallDetector(settings.stall_window, settings.stall_factor, stall_floor)
    points = {k: [exit_point(r, rule, settings, stall) for r in v] for k, v in results.items()}
    early = read({k: np.array([s for s, _ in v]) for k, v in points.items()}, cal)
    early["mean_steps"] = float(np.mean([n for v in points.values() for _, n in v]))
    early["mean_evaluations"] = float(np.mean([evaluations_at(r, n, settings) for k, v in results.items()
                                               for r, (_, n) in zip(v, points[k])]))  # fmt: skip
    early["mean_steps_per_class"] = {k: float(np.mean([n for _, n in v])) for k, v in points.items()}
    return {"full_budget": full, "early_exit": early}


def evaluate_robustness(
    make_attributor: Callable[[InversionSettings, Schedule], Attributor],
    sets: dict[str, np.ndarray],
    *,
    base: InversionSettings,
    schedule: Schedule,
    transforms: Sequence[str],
    modes: Sequence[str] = ("plain", "robust"),
    calibration_samples: int = 100,
    transform_seed: int = 0,
    progress: Progress | None = None,
    platform_only: Sequence[str] = (),
) -> dict[str, Any]:
    """Calibrate each mode, invert each transformed set once per loss and input size, read every mode (module
    docstring).

    ``sets``: "own" and the non-belonging classes, N×C×H×W in [0, 1]. ``make_attributor(settings,
    schedule)``: an attributor for the model (its backend, its encoder). ``schedule``: the live schedule
    whose early exit is replayed; the runs themselves spend the full budget. ``platform_only``: transforms
    read in the platform mode alone (the others' rows skipped to save time).
    """
    say = progress or (lambda _msg: None)
    transform_names([*transforms, *platform_only])  # unknown names fail before any work
    full = replace(schedule, early_exit=False)
    settings = {m: mode_settings(base, m) for m in modes}
    cals, report = {}, {"modes": {}, "transforms": {}}
    for m in modes:
        say(f"calibrating {m} ({calibration_samples} own samples)")
        cals[m] = make_attributor(settings[m], full).calibrate(calibration_samples)
        report["modes"][m] = {"settings": settings[m].to_dict(), "stall_floor": cals[m].stall_floor,
                              "restarted": cals[m].restarted, **cals[m].to_dict()["summary"]}  # fmt: skip
    runners: dict[tuple[str, bool], str] = {}  # (loss, own size) → the first such mode: it runs the inversions
    for m in modes:
        runners.setdefault(_runner_key(settings[m]), m)
    for t in [*transforms, *platform_only]:
        read_modes = ["platform"] if t in platform_only else list(modes)
        images = {k: apply_transform(t, v, seed=transform_seed + i) for i, (k, v) in enumerate(sets.items())}
        bounds = np.cumsum([0, *(len(v) for v in images.values())])
        entry: dict[str, Any] = {}
        for key, runner in runners.items():
            if not any(_runner_key(settings[m]) == key for m in read_modes):
                continue
            att = make_attributor(settings[runner], full)
            att.use_calibration(cals[runner])
            own_size = key[1]
            batch = [img for v in images.values() for img in (v if own_size else at_model_size(att.generator, v))]
            say(f"{t}: inverting {len(batch)} images ({key[0]}{', own size' if own_size else ''})")
            results = att.attribute(batch if own_size else np.stack(batch))
            by_class = {k: results[bounds[i] : bounds[i + 1]] for i, k in enumerate(images)}
            for m in read_modes:
                if _runner_key(settings[m]) == key:
                    entry[m] = read_mode(by_class, cals[m], settings[runner], schedule, att.stall_floor())
                    entry[m]["restarted_per_class"] = {k: sum(bool(r.restart_steps) for r in v)
                                                       for k, v in by_class.items()}  # fmt: skip
                    entry[m]["seconds_per_image"] = float(np.mean([r.seconds for r in results]))
                    entry[m]["evaluations_full_budget"] = float(np.mean([r.evaluations for r in results]))
                    if own_size:
                        entry[m]["geometry"] = {k: [r.geometry for r in v] for k, v in by_class.items()}
        report["transforms"][t] = {m: entry[m] for m in read_modes}
    return report


def _runner_key(settings: InversionSettings) -> tuple[str, bool]:
    """What decides the inversions of an evaluation image: the loss, and whether it is taken at its own size."""
    return settings.loss, settings.robust == "platform"


def at_model_size(generator: Any, images: np.ndarray) -> np.ndarray:
    """Images as a file of them is read for the model (``prepare_image``); model-size ones exactly as they are."""
    if tuple(images.shape[2:]) == tuple(generator.image_size):
        return images
    return np.stack([generator.prepare_image(img.transpose(1, 2, 0)) for img in images])
