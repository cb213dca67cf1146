import math

import numpy as np
import pytest
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.loop.outcome import BELONGING, CONTINUE, NON_BELONGING


def _calibration() -> Calibration:
    # four belonging trajectories over checkpoints 50..200; the last one ends far above the others
    steps = [50, 100, 150, 200]
    traj = np.array(
        [
            [1e-2, 1e-3, 1e-4, 1e-5],
            [2e-2, 2e-3, 2e-4, 2e-5],
            [3e-2, 3e-3, 3e-4, 3e-5],
            [9e-1, 8e-1, 7e-1, 6e-1],  # a stuck start: not accepted, must not widen the envelope
        ]
    )
    return Calibration(
        model_name="m",
        model_fingerprint="f",
        settings={},
        scores=list(traj[:, -1]),
        checkpoint_steps=steps,
        checkpoint_scores=[list(col) for col in traj.T],
        alpha=0.4,  # the quantile rule then accepts the three converged samples (threshold 3e-5)
    )


def test_envelope_uses_accepted_trajectories_only():
    rule = TrajectoryStopRule(_calibration(), "quantile", margin=2.0, min_step=100)
    assert math.isinf(rule.reject_threshold(50))  # before min_step
    assert rule.reject_threshold(100) == pytest.approx(2 * 3e-3)
    assert rule.reject_threshold(175) == pytest.approx(2 * 3e-4)  # last checkpoint at or before the step


def test_envelope_rank_uses_the_kth_largest_accepted_score():
    rule = TrajectoryStopRule(_calibration(), "quantile", margin=1.5, min_step=100, envelope_rank=2)
    assert rule.reject_threshold(100) == pytest.approx(1.5 * 2e-3)
    assert rule.reject_threshold(200) == pytest.approx(1.5 * 2e-5)
    # more ranks than accepted samples: no non-belonging exit at all, rather than an arbitrary one
    assert math.isinf(TrajectoryStopRule(_calibration(), "quantile", envelope_rank=4).reject_threshold(200))
    with pytest.raises(ValueError, match="envelope_rank"):
        TrajectoryStopRule(_calibration(), "quantile", envelope_rank=0)


def test_decisions():
    rule = TrajectoryStopRule(_calibration(), "quantile", margin=2.0, min_step=100)
    scores = np.array([2.5e-5, 1e-3, 1e-2, 5e-1])
    out = rule.check(100, scores, np.ones(4))
    assert list(out) == [BELONGING, CONTINUE, NON_BELONGING, NON_BELONGING]
    # the same scores before min_step: only the exact belonging exit applies
    assert list(rule.check(50, scores, np.ones(4))) == [BELONGING, CONTINUE, CONTINUE, CONTINUE]
    # complexity divides the loss before the comparison
    assert list(rule.check(100, np.array([5e-5]), np.array([2.0]))) == [BELONGING]


def test_bundled_model_own_sample_and_real_photo_exit_early():
    from genorigin.export.bundled import load_bundled, real_images_dir
    from genorigin.runtime.decide.calibration import quantize_8bit
    from genorigin.runtime.loop.settings import InversionSettings, Schedule
    from genorigin.runtime.methods.attribution import Attributor

    from genorigin.images import load_rgb8

    gen = load_bundled("dcgan_a")
    settings = InversionSettings(steps=400)
    attributor = Attributor(gen, settings=settings, schedule=Schedule(batch_size=16))
    attributor.calibrate(8)
    real = [gen.prepare_image(load_rgb8(p)) for p in sorted(real_images_dir().glob("*.png"))[:2]]
    results = attributor.attribute(np.concatenate([quantize_8bit(gen.sample(2, seed=99)), np.stack(real)]))
    for r in results[:2]:
        assert (r.verdict, r.stop_reason) == ("belonging", "belonging") and r.steps < settings.steps
    for r in results[2:]:
        assert (r.verdict, r.stop_reason) == ("non-belonging", "non-belonging") and r.steps < settings.steps


def test_schedule_exit_settings_reach_the_stop_rule():
    from genorigin.runtime.loop.settings import InversionSettings, Schedule
    from genorigin.runtime.methods.attribution import Attributor
    from helpers import tiny_generator

    gen = tiny_generator()
    settings = InversionSettings(steps=300, lr=0.05)
    noise = np.random.default_rng(5).random((2, 3, 8, 8)).astype(np.float32)
    default = Attributor(gen, settings=settings, schedule=Schedule(batch_size=8, check_every=25))
    cal = default.calibrate(8)
    assert all(r.stop_reason == "non-belonging" for r in default.attribute(noise))
    # an envelope rank beyond the accepted calibration samples switches the non-belonging exit off
    no_envelope = Attributor(gen, settings=settings, calibration=cal,
                             schedule=Schedule(batch_size=8, check_every=25, exit_envelope_rank=100))  # fmt: skip
    assert all(r.stop_reason == "budget" and r.steps == 300 for r in no_envelope.attribute(noise))


def _boundary_disagreement(cal: Calibration) -> float | None:
    """A score where ``score ≤ µ + crit·σ`` and ``(score − µ)/σ ≤ crit`` disagree in float64, if one exists."""
    thr = cal.grubbs_threshold
    s = thr
    for _ in range(200):
        for cand in (s, 2 * thr - s):
            if (cand <= thr) != ((cand - cal.mean) / cal.std <= cal.grubbs_critical):
                return float(cand)
        s = np.nextafter(s, np.inf)
    return None


def test_a_belonging_exit_is_never_a_non_belonging_verdict_at_the_boundary():
    """The early exit and the verdict compare the same statistic (issue 21): at a score where the threshold
    form and the statistic form round differently, both still say the same thing."""
    from genorigin.runtime.decide.decision import grubbs_test

    found = None
    for seed in range(200):  # find a calibration whose boundary rounds differently in the two forms
        r = np.random.default_rng(seed)
        scores = list(r.uniform(1e-6, 1e-5, 20))
        cal = Calibration(model_name="m", model_fingerprint="f", settings={}, scores=scores)
        found = _boundary_disagreement(cal)
        if found is not None:
            break
    assert found is not None, "no boundary case found: the search must be widened"
    rule = TrajectoryStopRule(cal, "grubbs", min_step=10**9)
    exit_says = rule.check(50, np.array([found]), np.ones(1))[0] == BELONGING
    verdict = grubbs_test(found, cal.mean, cal.std, cal.n, cal.alpha).belonging
    assert exit_says == verdict
