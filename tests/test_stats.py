"""harness.stats against hand-computed values and scipy's own implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import (bootstrap_ci, bootstrap_diff_ci, describe, mean, paired_t, sample_std,
                           welch_t)

# paper 000, Table 1: RR^6_AA and Std_AA over five training runs
RR6_AA = [0.997, 0.99, 0.99, 0.995, 0.999]
STD_AA = [0.956, 0.973, 0.986, 0.965, 0.986]


def test_mean_and_sample_std_by_hand():
    assert mean([1, 2, 3, 4]) == 2.5
    # sum of squared deviations 5, divided by n - 1 = 3
    assert sample_std([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    # the paper's "Avg." and "Std. Dev." rows of Table 1 (rounded to 3 digits there)
    assert round(mean(RR6_AA), 3) == 0.994 and round(sample_std(RR6_AA), 3) == 0.004
    assert round(mean(STD_AA), 3) == 0.973 and round(sample_std(STD_AA), 3) == 0.013
    assert math.isnan(sample_std([0.5])) and math.isnan(mean([]))


def test_bootstrap_by_hand_on_two_values():
    # resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% percentiles of 10000 resamples are exactly 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.7, 0.7, 0.7]) == (pytest.approx(0.7), pytest.approx(0.7))
    assert all(math.isnan(v) for v in bootstrap_ci([0.9]))


def test_bootstrap_matches_scipy_exactly_and_is_reproducible():
    x = np.array([0.976, 0.944, 0.975, 0.993, 0.965])
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=10_000,
                       rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(x) == (pytest.approx(ref.low, abs=1e-15), pytest.approx(ref.high, abs=1e-15))
    assert bootstrap_ci(x) == bootstrap_ci(list(x))  # same seed, same interval
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi and x.min() <= lo and hi <= x.max()
    s = describe(x)
    assert (s.n, s.mean, s.ci_low, s.ci_high) == (5, pytest.approx(x.mean()), lo, hi)


def test_bootstrap_of_a_difference_matches_scipy():
    a, b = np.array(RR6_AA), np.array([0.136, 0.2, 0.15, 0.14])
    ref = sps.bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
                        method="percentile", n_resamples=10_000,
                        rng=np.random.default_rng(0)).confidence_interval
    lo, hi = bootstrap_diff_ci(a, b, paired=False)
    assert (lo, hi) == (pytest.approx(ref.low, abs=1e-15), pytest.approx(ref.high, abs=1e-15))
    # paired: the interval of the per-replicate differences
    assert bootstrap_diff_ci(RR6_AA, STD_AA, paired=True) == bootstrap_ci(np.subtract(RR6_AA, STD_AA))
    with pytest.raises(ValueError):
        bootstrap_diff_ci([1, 2, 3], [1, 2], paired=True)


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_paired_t_matches_scipy(alternative):
    ours = paired_t(RR6_AA, STD_AA, alternative=alternative)
    ref = sps.ttest_rel(RR6_AA, STD_AA, alternative=alternative)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == ref.df == 4
    ci = ref.confidence_interval(0.95)
    bound = ours.bound(0.95, "lower" if alternative == "greater" else "upper")
    assert bound == pytest.approx(ci.low if alternative == "greater" else ci.high, rel=1e-10)
    d = np.subtract(RR6_AA, STD_AA)
    assert ours.effect == pytest.approx(d.mean() / d.std(ddof=1)) and ours.effect_name == "d_z"
    assert ours.diff == pytest.approx(0.021)


def test_shifted_paired_t_is_a_non_inferiority_test():
    # H1: mean(a - b) > -0.01 is the ordinary test of (a + 0.01) against b
    ours = paired_t(STD_AA, RR6_AA, delta=-0.01)
    ref = sps.ttest_rel(np.add(STD_AA, 0.01), RR6_AA, alternative="greater")
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10) and ours.delta == -0.01


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_welch_matches_scipy(alternative):
    a, b = RR6_AA, [0.966, 0.958, 0.984, 0.974]
    ours = welch_t(a, b, alternative=alternative, delta=0.005)
    ref = sps.ttest_ind(np.subtract(a, 0.005), b, equal_var=False, alternative=alternative)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == pytest.approx(ref.df, rel=1e-12)
    # Cohen's d with the pooled standard deviation, by hand
    pooled = math.sqrt((4 * np.var(a, ddof=1) + 3 * np.var(b, ddof=1)) / 7)
    assert ours.effect == pytest.approx((np.mean(a) - np.mean(b)) / pooled)
    assert (ours.n_left, ours.n_right, ours.kind) == (5, 4, "welch")


def test_no_spread_decides_by_the_sign():
    # a collapsed network predicts the same class for every seed (Std_AB = 0.136 in Table 2)
    t = welch_t([0.996, 1.0, 0.993, 0.996, 0.998], [0.136] * 5)
    assert t.p < 1e-6
    const = welch_t([0.5, 0.5], [0.136, 0.136])
    assert (const.t, const.p, const.bound()) == (math.inf, 0.0, pytest.approx(0.364))
    worse = paired_t([0.1, 0.1], [0.2, 0.2])
    assert worse.p == 1.0 and paired_t([0.1, 0.1], [0.2, 0.2], alternative="less").p == 0.0
    tie = paired_t([0.3, 0.3], [0.3, 0.3])
    assert math.isnan(tie.p)


def test_too_few_values_raise():
    with pytest.raises(ValueError):
        paired_t([1.0], [0.5])
    with pytest.raises(ValueError):
        welch_t([1.0, 0.9], [0.5])
    with pytest.raises(ValueError):
        paired_t([1.0, 2.0], [0.5])
    with pytest.raises(ValueError):
        paired_t([1.0, 2.0], [0.5, 0.1], alternative="two-sided")
