"""Statistics over seeds for reports and claims: spread, bootstrap intervals, one-sided t-tests.

Seeds (replicates) are few, typically 2 to 5, so everything here is written for small samples:

- the spread is the *sample* standard deviation (n - 1), as the papers' "Std. Dev." rows;
- a confidence interval of a mean is a percentile bootstrap over seeds with a fixed resampling
  seed, so regenerating a report from the same runs gives the same numbers; it needs n >= 2
  (one seed has no spread to resample) and is optimistic for n < 5, which the report says;
- claims are tested with Student's t: paired over replicates when both sides have the same
  replicates, Welch's unequal-variance test otherwise; one-sided against a shift ``delta``
  (``delta = -margin`` is a non-inferiority test). A side without spread (every seed gave the
  same value, as a collapsed constant predictor does) gives a standard error of zero; the test then
  decides by the sign of ``diff - delta`` alone instead of returning NaN.

Only numpy and scipy; results are plain floats so they print and serialise without surprises.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

#: resampling seed of every bootstrap in reports: fixed, so reports are reproducible
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000
ALPHA = 0.05


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def mean(values: Sequence[float]) -> float:
    x = _array(values)
    return float(x.mean()) if len(x) else math.nan


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with n - 1 in the denominator; NaN below two values."""
    x = _array(values)
    return float(x.std(ddof=1)) if len(x) >= 2 else math.nan


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (``scipy.stats.bootstrap``), resampling the
    seeds with a fixed generator; (NaN, NaN) below two values."""
    x = _array(values)
    if len(x) < 2:
        return math.nan, math.nan
    return _mean_interval(tuple(x.tolist()), level, resamples, seed)


@functools.lru_cache(maxsize=4096)
def _mean_interval(values: tuple[float, ...], level: float, resamples: int,
                   seed: int) -> tuple[float, float]:
    """Cached: a report asks for the interval of the same seeds' values in several tables and
    figures, and each bootstrap costs milliseconds."""
    return _bootstrap((np.array(values),), lambda s, axis=-1: s.mean(axis), level, resamples, seed)


def bootstrap_diff_ci(left: Sequence[float], right: Sequence[float], *, paired: bool,
                      level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(left) - mean(right).

    Paired: resample the per-replicate differences. Unpaired: resample each side on its own.
    """
    a, b = _array(left), _array(right)
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
        return bootstrap_ci(a - b, level=level, resamples=resamples, seed=seed)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    return _bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis), level,
                      resamples, seed)


def _bootstrap(samples, statistic, level: float, resamples: int, seed: int) -> tuple[float, float]:
    res = sps.bootstrap(samples, statistic, method="percentile", n_resamples=resamples,
                        confidence_level=level, rng=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def p_text(p: float, missing: str = "nan") -> str:
    """A p-value in two significant digits (``1.2e-05`` below 1e-4); ``missing`` for NaN."""
    if not math.isfinite(p):
        return missing
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


@dataclass(frozen=True)
class Summary:
    """What a table cell needs: n, mean, sample std and the bootstrap interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def describe(values: Sequence[float], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = BOOTSTRAP_SEED) -> Summary:
    lo, hi = bootstrap_ci(values, level=level, resamples=resamples, seed=seed)
    return Summary(len(values), mean(values), sample_std(values), lo, hi)


@dataclass(frozen=True)
class TTest:
    """A one-sided t-test of mean(left) - mean(right) against ``delta``.

    ``alternative`` is the hypothesis the data must support: ``greater`` (diff > delta) or
    ``less`` (diff < delta). ``effect`` is Cohen's d_z (mean difference over the standard
    deviation of the differences) for the paired test and Cohen's d with the pooled standard
    deviation for Welch's; ``effect_name`` says which.
    """

    kind: str  # "paired" or "welch"
    alternative: str
    delta: float
    n_left: int
    n_right: int
    mean_left: float
    mean_right: float
    diff: float
    se: float
    df: float
    t: float
    p: float
    effect: float
    effect_name: str

    def bound(self, level: float = 1.0 - ALPHA, side: str = "lower") -> float:
        """One-sided confidence bound of the difference: ``lower`` (diff > bound with
        confidence ``level``) or ``upper``."""
        if self.se == 0:
            return self.diff
        if not math.isfinite(self.se) or not math.isfinite(self.df):
            return math.nan
        q = float(sps.t.ppf(level, self.df))
        return self.diff - q * self.se if side == "lower" else self.diff + q * self.se

    def as_dict(self) -> dict:
        return asdict(self)


def _one_sided(diff: float, delta: float, se: float, df: float, alternative: str) -> tuple[float, float]:
    """t and the one-sided p-value from scipy's t distribution, with the one rule scipy lacks:
    without spread (se = 0) the sign of ``diff - delta`` decides, instead of a NaN. The
    statistic is computed here rather than by ``scipy.stats.ttest_1samp``/``ttest_ind``, whose
    arithmetic differs in the last digits (19 of the 52 committed claims' ``claims.json``
    would change) and which take no shift for Welch's test."""
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', not {alternative!r}")
    if se == 0:  # no spread at all: the sign decides, with certainty
        if diff == delta:
            return math.nan, math.nan
        t = math.inf if diff > delta else -math.inf
    else:
        t = (diff - delta) / se
    if not math.isfinite(df) and math.isfinite(t):
        return t, math.nan
    if math.isinf(t):
        p = 0.0 if (t > 0) == (alternative == "greater") else 1.0
    else:
        p = float(sps.t.sf(t, df) if alternative == "greater" else sps.t.cdf(t, df))
    return float(t), p


def paired_t(left: Sequence[float], right: Sequence[float], *, delta: float = 0.0,
             alternative: str = "greater") -> TTest:
    """Paired t-test on the per-replicate differences left[i] - right[i] (n >= 2 pairs)."""
    a, b = _array(left), _array(right)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a paired t-test needs at least two pairs")
    d = a - b
    n = len(d)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    diff = float(d.mean())
    t, p = _one_sided(diff, delta, se, n - 1, alternative)
    effect = diff / sd if sd > 0 else (math.copysign(math.inf, diff) if diff else math.nan)
    return TTest("paired", alternative, float(delta), n, n, float(a.mean()), float(b.mean()), diff,
                 se, float(n - 1), t, p, effect, "d_z")


def welch_t(left: Sequence[float], right: Sequence[float], *, delta: float = 0.0,
            alternative: str = "greater") -> TTest:
    """Welch's unequal-variance t-test with Welch-Satterthwaite degrees of freedom."""
    a, b = _array(left), _array(right)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    n1, n2 = len(a), len(b)
    v1, v2 = float(a.var(ddof=1)), float(b.var(ddof=1))
    q1, q2 = v1 / n1, v2 / n2
    se = math.sqrt(q1 + q2)
    df = (q1 + q2) ** 2 / (q1 ** 2 / (n1 - 1) + q2 ** 2 / (n2 - 1)) if se > 0 else math.inf
    diff = float(a.mean() - b.mean())
    t, p = _one_sided(diff, delta, se, df, alternative)
    pooled = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    effect = diff / pooled if pooled > 0 else (math.copysign(math.inf, diff) if diff else math.nan)
    return TTest("welch", alternative, float(delta), n1, n2, float(a.mean()), float(b.mean()), diff,
                 se, float(df), t, p, effect, "d")
