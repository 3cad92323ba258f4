"""The race's statistics on designed data whose right answer is known (race/stats.py, race/power.py)."""
import math

import numpy as np
import pytest

from zenith_det.race import power
from zenith_det.race import stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_t_quantiles_are_exact_at_every_dof():
    """The old table stopped at 10 dof and used 1.96 beyond: 5-12% too narrow from 12 to 31 seeds."""
    for dof in (1, 2, 5, 10, 11, 15, 20, 30, 39, 200):
        assert stats.t975(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), rel=1e-12)
    assert stats.t975(15) == pytest.approx(2.1314, abs=1e-4) and stats.t975(30) == pytest.approx(2.0423, abs=1e-4)
    assert stats.t975(0) == math.inf
    s = stats.Summary([1.0, 2.0, 3.0])
    lo, hi = s.ci95()
    assert s.mean == 2.0 and s.sd == 1.0 and hi - 2.0 == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert stats.Summary([2.0]).ci95() == (-math.inf, math.inf)


@pytest.mark.parametrize("n", [4, 12, 31])
def test_the_95_interval_covers_a_known_mean_95_percent_of_the_time(n):
    """Simulated paired differences with a known mean: the t interval covers it in ~95% of
    4000 draws; the old 1.96 beyond 10 dof covered too rarely at 12 seeds."""
    rng = np.random.default_rng(n)
    true_mean, draws = 1.3, 4000
    data = rng.normal(true_mean, 2.0, size=(draws, n))
    covered = normal_covered = 0
    for row in data:
        s = stats.Summary(row)
        lo, hi = s.ci95()
        covered += lo <= true_mean <= hi
        normal_covered += abs(s.mean - true_mean) <= 1.96 * s.se
    assert 0.94 <= covered / draws <= 0.96
    if n == 12:
        assert normal_covered / draws < 0.935


def test_paired_t_p_is_the_one_sample_t_test():
    rng = np.random.default_rng(1)
    for n in (3, 8, 30):
        x = rng.normal(0.5, 1.0, n)
        assert stats.paired_t_p(stats.Summary(x)) == pytest.approx(scipy_stats.ttest_1samp(x, 0.0).pvalue, rel=1e-9)
    assert stats.paired_t_p(stats.Summary([1.0])) == 1.0
    assert stats.paired_t_p(stats.Summary([2.0, 2.0, 2.0])) == 0.0  # no spread, not 0: certain


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06 for the last
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5] and stats.holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])
    assert stats.holm([]) == []
    # the family-wise error rate under the null: any adjusted p below 0.05 in at most ~5% of families
    rng = np.random.default_rng(2)
    families = rng.uniform(size=(4000, 5))
    assert np.mean([min(stats.holm(list(p))) < 0.05 for p in families]) <= 0.055
    # while unadjusted, five tests reject somewhere in ~23% of families
    assert np.mean((families < 0.05).any(axis=1)) > 0.2


def test_tost_accepts_and_rejects_constructed_data():
    rng = np.random.default_rng(3)
    close = stats.Summary(0.2 + rng.normal(0, 1.0, 40))  # mean ~0.2, SE ~0.16: well inside +-1
    assert stats.tost_p(close, 1.0) < 0.01 and stats.beyond_margin_p(close, 1.0) > 0.5
    noisy = stats.Summary(rng.normal(0.0, 3.0, 4))  # no difference, but four seeds cannot show equivalence
    assert stats.tost_p(noisy, 1.0) > 0.05 and stats.paired_t_p(noisy) > 0.05
    far = stats.Summary(3.0 + rng.normal(0, 0.5, 10))
    assert stats.tost_p(far, 1.0) > 0.99 and stats.beyond_margin_p(far, 1.0) < 0.001
    below = stats.Summary(-3.0 + rng.normal(0, 0.5, 10))
    assert stats.beyond_margin_p(below, 1.0) < 0.001
    # TOST at alpha is the (1 - 2 alpha) interval lying inside the margin
    for _ in range(50):
        s = stats.Summary(rng.normal(rng.uniform(-1.5, 1.5), 1.0, 12))
        lo, hi = s.ci(0.90)
        assert (stats.tost_p(s, 1.0) < 0.05) == (-1.0 < lo and hi < 1.0)
    # at the margin itself, TOST declares equivalence in at most alpha of the draws
    at_margin = [stats.tost_p(stats.Summary(row), 1.0) < 0.05 for row in rng.normal(1.0, 1.0, (3000, 12))]
    assert np.mean(at_margin) <= 0.06


def test_sd_from_an_interval_inverts_the_interval():
    s = stats.Summary([1.0, 4.0, -2.0, 3.5])
    lo, hi = s.ci95()
    assert stats.sd_from_interval(lo, hi, 4) == pytest.approx(s.sd)
    # the paired SD of ZENITH vs SGD multi-step behind docs/RESULTS.md's -4.0 [-18.8, +10.7] (3 seeds)
    assert stats.sd_from_interval(-18.8, 10.7, 3) == pytest.approx(5.94, abs=0.01)


def test_power_matches_simulation():
    rng = np.random.default_rng(4)
    n, effect, sd, alpha = 12, 1.5, 2.0, 0.05
    draws = rng.normal(effect, sd, (4000, n))
    simulated = np.mean([stats.paired_t_p(stats.Summary(row)) < alpha for row in draws])
    assert power.power_paired_t(n, effect, sd, alpha) == pytest.approx(simulated, abs=0.03)
    draws = rng.normal(0.0, sd, (4000, n))
    simulated = np.mean([stats.tost_p(stats.Summary(row), 2.5) < alpha for row in draws])
    assert power.power_tost(n, 2.5, sd, alpha) == pytest.approx(simulated, abs=0.03)
    # the independent estimate in the issue: ~30 paired seeds, ~85% power for 3 box AP at a paired SD ~5.5
    assert power.power_paired_t(30, 3.0, 5.5, 0.05) == pytest.approx(0.82, abs=0.03)
    assert power.seeds_for(0.8, lambda k: power.power_paired_t(k, 3.0, 5.94, 0.025)) == 40


def test_the_upper_bound_of_an_sd_covers_the_true_sd_95_percent_of_the_time():
    assert power.sd_upper_bound(1.0, 3) == pytest.approx((2 / 0.10259) ** 0.5, rel=1e-4)  # chi2(0.05, 2) = 0.10259
    rng = np.random.default_rng(7)
    draws = rng.normal(0.0, 2.0, (4000, 5))
    covered = np.mean([power.sd_upper_bound(float(np.std(row, ddof=1)), 5) >= 2.0 for row in draws])
    # a binomial proportion of 4000 draws at 0.95 has SD 0.0034: 0.95 within 4 SDs
    assert covered == pytest.approx(0.95, abs=0.014)
