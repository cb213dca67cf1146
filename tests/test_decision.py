import math

import numpy as np
import pytest
from genorigin.runtime.decide.decision import (
    empirical_threshold,
    grubbs_critical_value,
    grubbs_p_value,
    grubbs_test,
)
from genorigin.runtime.decide.student_t import regularized_beta, t_isf, t_pdf, t_sf
from scipy import stats

pytestmark = pytest.mark.numeric  # holds on any CPU: .ci/run repeats it under other ATEN_CPU_CAPABILITY

# One-sided Grubbs critical values at α = 0.05 (published tables, e.g. NIST/ASTM E178).
TABLE_ONE_SIDED_005 = {3: 1.153, 5: 1.672, 10: 2.176, 20: 2.557, 30: 2.745, 50: 2.956, 100: 3.207}


@pytest.mark.parametrize(("n", "expected"), sorted(TABLE_ONE_SIDED_005.items()))
def test_grubbs_critical_matches_tables(n, expected):
    assert grubbs_critical_value(n, 0.05) == pytest.approx(
        expected, abs=3e-3
    )  # tables round and approximate at large n


def test_grubbs_critical_matches_scipy_derivation():
    for n in (7, 40, 200):
        for alpha in (0.01, 0.05, 0.1):
            t = stats.t.isf(alpha / n, n - 2)
            expected = (n - 1) / math.sqrt(n) * math.sqrt(t**2 / (n - 2 + t**2))
            assert grubbs_critical_value(n, alpha) == pytest.approx(expected, rel=1e-12)


def test_p_value_inverts_critical_value():
    for n in (10, 100):
        for alpha in (0.01, 0.05):
            assert grubbs_p_value(grubbs_critical_value(n, alpha), n) == pytest.approx(alpha, rel=1e-6)


def test_grubbs_test_verdicts():
    out = grubbs_test(10.0, mean=1.0, std=1.0, n=100, alpha=0.05)
    assert not out.belonging and out.statistic == pytest.approx(9.0) and out.p_value < 1e-6
    assert grubbs_test(1.5, mean=1.0, std=1.0, n=100, alpha=0.05).belonging
    with pytest.raises(ValueError):
        grubbs_test(float("nan"), 1.0, 1.0, 100, 0.05)
    with pytest.raises(ValueError):
        grubbs_critical_value(2, 0.05)


def test_empirical_threshold_controls_false_rejections(rng):
    scores = rng.lognormal(size=99)
    thr = empirical_threshold(scores, 0.05)
    assert thr == np.sort(scores)[94]  # ceil(100 * 0.95) = 95th smallest
    fresh = rng.lognormal(size=200_000)
    assert (fresh > thr).mean() < 0.08


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30, 98, 398, 1000, 5000])
def test_student_t_quantile_and_tail_match_scipy(df):
    """runtime/decide/student_t.py replaces scipy.stats (0.6 s of the command line's start-up) for the Grubbs test."""
    for p in (1e-12, 1e-9, 1e-6, 5e-5, 5e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.7, 0.99, 1 - 1e-6):
        assert t_isf(p, df) == pytest.approx(stats.t.isf(p, df), rel=1e-11, abs=1e-300), p
    for t in (-5.0, -1.0, 0.0, 0.3, 1.0, 2.5, 4.0, 10.0, 50.0, 1e3):
        assert t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-11, abs=1e-300), t
    assert t_pdf(1.5, df) == pytest.approx(stats.t.pdf(1.5, df), rel=1e-12)


def test_regularized_beta_matches_scipy():
    from scipy import special

    for a, b in ((0.5, 0.5), (2.0, 0.5), (49.0, 0.5), (3.0, 7.0), (200.0, 150.0)):
        for x in (0.0, 1e-8, 0.01, 0.3, 0.5, 0.9, 0.999, 1.0):
            assert regularized_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-11, abs=1e-300)


def test_student_t_refuses_what_has_no_answer():
    with pytest.raises(ValueError, match="p must be in"):
        t_isf(0.0, 5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_sf(1.0, 0)
