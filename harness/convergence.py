"""Was a row still improving when its training stopped? The report's convergence rule.

A claim compares rows at the end of their training. When one of them was still improving, the
verdict measures the training budget as much as the method: a *reproduced* against a baseline
that had not finished learning is not the same result. So the report judges every row (a stage
and a row label, over its seeds) from the per-epoch history of its headline metric and of its
training loss (and, for a claim on another metric, of that metric), and says so beside the
numbers. The rule, for one metric of one row:

- **gain of a run**: the least-squares slope (``scipy.stats.linregress``) of the metric against
  the epoch over the evaluations in the last quarter of the run's epochs (epoch >= 3/4 of them),
  times a quarter of the epochs, signed so that improving is positive (lower is better for a
  loss, an error or an MSE, higher for anything else: ``lower_is_better``). It reads as "what
  the run would still gain over another quarter of its training, at the rate it was gaining
  when it stopped". A slope rather than the difference of two evaluations, because it uses
  every evaluation of the window, and a window rather than a fit of the whole curve, because a
  learning-rate step before the last quarter is over by then.
- **paired over seeds**: one gain per seed; Student's t (``scipy.stats.ttest_1samp``) gives the
  one-sided 95% bounds of their mean. Gains that are all equal give bounds equal to the mean
  (no spread to test), as ``harness.stats`` does for claims.
- **converged**: the upper bound is below the margin (or not above 0, so that a history that
  never moved converged even where its margin is 0): the data rule out a gain of the margin or
  more. **still improving**: otherwise, when the lower bound is above 0: the gain is real and
  may be as large as the margin. **unclear**: neither: too noisy to tell at this many seeds.
- **cannot be judged**: a run with fewer than ``MIN_EVALUATIONS`` (8) evaluations of the
  metric, fewer than 2 of them in the last quarter, or fewer than 2 seeds. The report says so
  instead of guessing.

Margins: for the row's metrics the setting's ``report: {convergence: {margin: M}}``, by default
the smallest absolute margin of the setting's claims on that metric (an error in percent
compared ``within 1`` gets 1), else 0.01 (one accuracy point), in the metric's units; for the training loss,
which has no natural unit (a sum of squared errors can be in the hundreds), ``LOSS_FRACTION``
(5%) of the distance it travelled during the run (max - min of its history, the mean over
seeds). A row is still improving when any of its metrics is, converged when every one of them
was judged and converged.

What the rule cannot see: a schedule that decays the learning rate to almost nothing ends any
improvement, so such a row reads as converged however undertrained it is; and a window of two
evaluations (8 evaluations spread over the epochs) is noisy, which makes *unclear* more likely,
never *converged*.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from .claims import DEFAULT_MARGIN, MIN_SEEDS
from .stats import ALPHA

MIN_EVALUATIONS = 8
LOSS_FRACTION = 0.05
#: the fraction of the epochs at which the window of the last quarter starts
WINDOW_START = 0.75

CONVERGED = "converged"
IMPROVING = "still improving"
UNCLEAR = "unclear"
UNJUDGED = "cannot be judged"

#: how tables mark a row in each state (a converged row is not marked)
MARKS = {CONVERGED: "", IMPROVING: "↑", UNCLEAR: "?", UNJUDGED: "†"}
LOWER_IS_BETTER = ("loss", "err", "error", "mse")

History = Sequence[tuple[int, float]]


def lower_is_better(metric: str) -> bool:
    """Losses, errors and squared errors fall as a network learns; everything else rises."""
    name = metric.removeprefix("final_")
    return name.startswith("loss") or name.endswith(LOWER_IS_BETTER)


@dataclass(frozen=True)
class Judgement:
    """One metric of one row: the state, why, and the numbers behind it."""

    metric: str
    state: str
    reason: str
    seeds: int = 0
    evaluations: int = 0  # the fewest evaluations of a run of the row
    gain: float = math.nan  # mean over seeds of the gain over a quarter of the epochs
    std: float = math.nan
    lower: float = math.nan  # one-sided 95% bounds of the mean gain
    upper: float = math.nan
    margin: float = math.nan

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_gain(history: History, epochs: int, *, lower: bool) -> float | None:
    """One run's gain over a quarter of its epochs, from the slope over its last quarter; None
    when the window holds fewer than two evaluations."""
    start = WINDOW_START * epochs
    window = [(e, v) for e, v in history if e >= start]
    if len({e for e, _ in window}) < 2:
        return None
    x, y = zip(*window)
    slope = float(sps.linregress(x, y).slope)
    return (-slope if lower else slope) * epochs / 4


def _bounds(gains: np.ndarray) -> tuple[float, float]:
    """One-sided (1 - ALPHA) bounds of the mean gain; the mean itself when the gains are all
    equal (scipy would warn and return NaN: there is no spread to test)."""
    mean = float(gains.mean())
    if np.ptp(gains) <= 1e-12 * max(1.0, abs(mean)):
        return mean, mean
    level = 1 - ALPHA
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low = sps.ttest_1samp(gains, 0.0, alternative="greater").confidence_interval(level).low
        high = sps.ttest_1samp(gains, 0.0, alternative="less").confidence_interval(level).high
    return float(low), float(high)


def _clean(histories: Mapping[int, History]) -> dict[int, list[tuple[int, float]]]:
    return {rep: [(int(e), float(v)) for e, v in h if v is not None and math.isfinite(v)]
            for rep, h in histories.items()}


def _unjudged(runs: dict, fewest: int) -> str:
    """Why these histories are too short to judge, or "" when they are not."""
    if len(runs) < MIN_SEEDS:
        return (f"{len(runs)} seed{'s' if len(runs) != 1 else ''} with a history (the test "
                f"needs {MIN_SEEDS})")
    if fewest < MIN_EVALUATIONS:
        return (f"{fewest} evaluation{'s' if fewest != 1 else ''} in a run (the rule needs "
                f"{MIN_EVALUATIONS})")
    return ""


def judge(histories: Mapping[int, History], epochs: int, *, metric: str,
          margin: float | None = None, relative: bool = False) -> Judgement:
    """Judge one metric of one row from replicate -> [(epoch, value)]. ``margin`` is in the
    metric's units, or with ``relative`` a fraction of the distance the metric travelled."""
    runs = _clean(histories)
    fewest = min((len(h) for h in runs.values()), default=0)
    why = _unjudged(runs, fewest)
    lower = lower_is_better(metric)
    per_run = [] if why else [run_gain(h, epochs, lower=lower) for h in runs.values()]
    if not why and any(g is None for g in per_run):
        why = "fewer than 2 evaluations in the last quarter of the epochs"
    if why:
        return Judgement(metric, UNJUDGED, why, len(runs), fewest)
    gains = np.asarray(per_run, dtype=np.float64)
    if relative:
        travel = float(np.mean([np.ptp([v for _, v in h]) for h in runs.values()]))
        margin = (LOSS_FRACTION if margin is None else margin) * travel
    margin = DEFAULT_MARGIN if margin is None else float(margin)
    low, high = _bounds(gains)
    std = float(gains.std(ddof=1))
    numbers = dict(seeds=len(runs), evaluations=fewest, gain=float(gains.mean()), std=std,
                   lower=low, upper=high, margin=margin)
    if high < margin or high <= 0:  # <= 0: a flat history converged even with no margin
        below = f"below {margin:.3g}" if high < margin else "not above 0"
        state, why = CONVERGED, (f"the upper bound of the gain, {high:+.3g}, is {below}"
                                 + (" (it is falling)" if high < 0 else ""))
    elif low > 0:
        state, why = IMPROVING, f"the lower bound of the gain, {low:+.3g}, is above 0"
    else:
        state, why = UNCLEAR, (f"the gain lies between {low:+.3g} and {high:+.3g}, which neither "
                               f"rules out {margin:.3g} nor excludes 0")
    return Judgement(metric, state, why, **numbers)


@dataclass(frozen=True)
class RowConvergence:
    """A row's judgements, its headline metric first."""

    judgements: tuple[Judgement, ...]

    @property
    def state(self) -> str:
        """Still improving if any metric is; converged only if every one was judged converged."""
        states = [j.state for j in self.judgements]
        for state in (IMPROVING, UNCLEAR, UNJUDGED):
            if state in states:
                return state
        return CONVERGED if states else UNJUDGED

    @property
    def mark(self) -> str:
        return MARKS[self.state]

    def brief(self) -> str:
        """The state with the metrics that make it, e.g. ``still improving (test_acc)``."""
        state = self.state
        if state == CONVERGED:
            return state
        which = [j.metric.removeprefix("final_") for j in self.judgements if j.state == state]
        return f"{state} ({', '.join(which)})"


def claim_note(rows: Sequence[tuple[str, RowConvergence | None]]) -> str:
    """What a claim's reader must know about its sides' convergence, in one phrase: the rows
    that were still improving, unclear or not judged, or that every row converged."""
    judged = [(name, conv) for name, conv in rows if conv is not None]
    if not judged:
        return "no finished runs to judge"
    open_rows = [f"{name} {conv.mark} {conv.brief()}" for name, conv in judged
                 if conv.state != CONVERGED]
    if not open_rows:
        return "every row converged"
    return "; ".join(open_rows)
