"""Claims a suite makes about its results, checked against the runs with a one-sided t-test.

Grammar (one claim per string, whitespace between the parts)::

    claim  :=  SIDE OP SIDE  [ "on" METRIC ]  [ "within" MARGIN ]
    SIDE   :=  ROW  |  "(" ROW " - " ROW ")"     # a row, or the difference of two rows
    ROW    :=  STAGE "." LABEL          # a stage of the setting and a row label of that stage
    OP     :=  ">"  |  ">="  |  "<"  |  "<="
    MARGIN :=  a number (absolute, in the metric's units)  |  a number followed by "%"
               (relative to the mean of the side written on the right)

Examples: ``AB.RR6 > AB.std``, ``AB.RR6 >= B.std within 0.02``, ``A.RR6 > A.std on
seconds_per_epoch``, ``(mix.NN - mix.RN) > (mnist.NN - mnist.RN) on test_err`` (a gain larger
on one data set than on another: each side is the per-replicate difference of its two rows, so
both sides are paired over the suite's seeds like any other). The row label is the grid method label the tables use: ``AB.RR6`` is phase II
of the RR6 cell even though AB itself trains with std. ``METRIC`` is a stage run's final metric,
with or without its ``final_`` prefix (default: the setting's headline metric, its
``report: {metric: ...}``).

What the operators mean, with d = mean(left) - mean(right) and m the margin (default 0.01, one
accuracy point):

- ``>`` (superiority): reproduced when the test of d > 0 is significant; not reproduced when the
  test of d < m is significant (the data rule out an improvement as large as the margin);
- ``>=`` (non-inferiority): reproduced when the test of d > -m is significant (left is at most m
  worse); not reproduced when the test of d < -m is significant (left is worse by more than m);
- ``<`` and ``<=`` are the same with the sides swapped.

Anything else is inconclusive: too few seeds (fewer than two on a side, or missing runs) or an
interval too wide to decide either way. Tests are one-sided at alpha = 0.05, paired over
replicates when both sides have the same replicate numbers (the same ``seedN`` of the suite),
Welch's otherwise. Both decisions are the same as asking whether the one-sided 95% confidence
bound of d clears the threshold, which is how the report prints them.

A verdict compares the rows as their training left them, so it also carries the convergence of
its sides (``Verdict.convergence``, filled by the report from ``harness.convergence``): for each
row of either side, whether its headline metric, its training loss or the claim's metric was
still improving over the last quarter of its epochs (the gain per seed from the slope there,
paired over seeds, its one-sided 95% bounds against a margin: 0.01 in the metric's units, 5% of
the distance the loss travelled), unclear, or could not be judged (fewer than 8 evaluations a
run, or one seed). The verdict itself does not change: a *reproduced* beside a row that was
still improving is reported as such, and the reader decides what the budget did to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import UserError, suggest
from .stats import ALPHA, bootstrap_diff_ci, mean, p_text, paired_t, sample_std, welch_t

OPS = (">=", "<=", ">", "<")
DEFAULT_MARGIN = 0.01
MIN_SEEDS = 2

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"

_SIDE = r"\([^()<>=]+\)|[^\s<>=]+"
_CLAIM = re.compile(
    rf"^\s*(?P<left>{_SIDE})\s*(?P<op>>=|<=|>|<)\s*(?P<right>{_SIDE}?)"
    r"(?:\s+on\s+(?P<metric>[A-Za-z0-9_./-]+))?"
    r"(?:\s+within\s+(?P<margin>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?P<pct>%)?)?\s*$")
_HINT = 'write e.g. "AB.RR6 > AB.std", "AB.RR6 >= B.std within 0.02" or "A.RR6 < A.std on seconds_per_epoch"'


@dataclass(frozen=True)
class Side:
    stage: str
    label: str

    def __str__(self) -> str:
        return f"{self.stage}.{self.label}"


@dataclass(frozen=True)
class Diff:
    """The per-replicate difference of two rows, ``(a - b)``."""

    a: Side
    b: Side

    def __str__(self) -> str:
        return f"({self.a} - {self.b})"


def final_metric(name: str) -> str:
    """The summary metric a run logs for ``name`` (its last value): ``final_`` + name."""
    return name if name.startswith("final_") else f"final_{name}"


def rows_of(side: Side | Diff) -> tuple[Side, ...]:
    """The rows a side reads."""
    return (side.a, side.b) if isinstance(side, Diff) else (side,)


def side_values(side: Side | Diff, values, metric: str) -> dict[int, float]:
    """replicate -> the side's value, from ``values(stage, label, metric)`` (replicate -> value);
    a difference only where both of its rows have the replicate."""
    if not isinstance(side, Diff):
        return values(side.stage, side.label, metric)
    a, b = values(side.a.stage, side.a.label, metric), values(side.b.stage, side.b.label, metric)
    return {r: a[r] - b[r] for r in a if r in b and a[r] is not None and b[r] is not None}


@dataclass(frozen=True)
class Claim:
    """A parsed claim; ``text`` is what the suite wrote."""

    text: str
    left: Side | Diff
    op: str
    right: Side | Diff
    metric: str = ""
    margin: float = DEFAULT_MARGIN
    relative: bool = False  # margin is a fraction of the right side's mean

    @property
    def canonical(self) -> tuple[Side, str, Side]:
        """The same claim written with ``>`` or ``>=`` (sides swapped for ``<``, ``<=``)."""
        if self.op in ("<", "<="):
            return self.right, self.op.replace("<", ">"), self.left
        return self.left, self.op, self.right


def _split_side(token: str, stages: Sequence[str] | None) -> Side | None:
    """STAGE.LABEL, where the label may itself contain dots (auto labels like ``w0.01``): a
    known stage name wins, else the first dot splits."""
    if stages:
        for st in sorted(stages, key=len, reverse=True):
            if token.startswith(st + ".") and len(token) > len(st) + 1:
                return Side(st, token[len(st) + 1:])
    if "." not in token:
        return None
    stage, label = token.split(".", 1)
    return Side(stage, label) if stage and label else None


def _parse_side(token: str, stages: Sequence[str] | None) -> Side | Diff | None:
    if not token.startswith("("):
        return _split_side(token, stages)
    parts = token[1:-1].strip().split(" - ")
    if len(parts) != 2:
        return None
    a, b = (_split_side(p.strip(), stages) for p in parts)
    return Diff(a, b) if a is not None and b is not None else None


def parse(text: Any, *, metric: str, stages: Sequence[str] | None = None) -> Claim:
    """Parse one claim; ``metric`` is the one it compares without ``on``. Raises UserError
    (without file/key: the caller adds them)."""
    if not isinstance(text, str):
        raise UserError(f"a claim is a string, got {type(text).__name__}", hint=_HINT)
    m = _CLAIM.match(text)
    if not m:
        raise UserError(f"cannot read claim {text!r}", hint=_HINT)
    left, right = _parse_side(m["left"], stages), _parse_side(m["right"], stages)
    for token, side in ((m["left"], left), (m["right"], right)):
        if side is None:
            raise UserError(f"claim {text!r}: {token!r} is not STAGE.LABEL or "
                            "(STAGE.LABEL - STAGE.LABEL)", hint=_HINT)
    metric = final_metric(m["metric"] or metric)
    margin = DEFAULT_MARGIN
    relative = False
    if m["margin"] is not None:
        margin = float(m["margin"])
        relative = bool(m["pct"])
        if relative:
            margin /= 100.0
    return Claim(text=text, left=left, op=m["op"], right=right, metric=metric, margin=margin,
                 relative=relative)


# ------------------------------------------------------------------------------------------------
# Checking a setting's claims and references against its rows
# ------------------------------------------------------------------------------------------------
def check_claims(texts: list[str], rows: dict[str, list[str]], *, file: str, metric: str,
                 prefix: str = "") -> list[Claim]:
    """Parse a setting's ``claims:`` and check them against its stages and their row labels
    (stage -> labels, as the suite's expansion files runs); ``metric`` is the setting's
    headline metric, which a claim without ``on`` compares."""
    claims = []
    for i, text in enumerate(texts):
        key = f"{prefix}claims[{i}]"
        try:
            claim = parse(text, stages=list(rows), metric=metric)
        except UserError as err:
            raise err.located(file=file, key=key) from None
        for side in rows_of(claim.left) + rows_of(claim.right):
            if side.stage not in rows:
                raise UserError(f"claim {text!r} names no stage of this setting: {side.stage!r}",
                                file=file, key=key, hint=suggest(side.stage, rows))
            if side.label not in rows[side.stage]:
                raise UserError(f"claim {text!r}: stage {side.stage!r} has no row {side.label!r}",
                                file=file, key=key, hint=suggest(side.label, rows[side.stage]))
        if claim.left == claim.right:
            raise UserError(f"claim {text!r} compares {claim.left} with itself", file=file, key=key)
        if claim.margin < 0 or not math.isfinite(claim.margin):
            raise UserError(f"claim {text!r}: the margin must be a non-negative number",
                            file=file, key=key)
        claims.append(claim)
    return claims


@dataclass(frozen=True)
class Reference:
    """A published value for one (stage, row): a mean, with its spread and seeds when given."""

    stage: str
    label: str
    mean: float
    std: float | None = None
    n: int | None = None
    values: tuple[float, ...] = ()
    source: str = ""
    metric: str = ""


REFERENCE_KEYS = ("mean", "std", "n", "values", "source", "metric")


def parse_reference(raw: dict, rows: dict[str, list[str]], *, file: str, metric: str,
                    prefix: str = "") -> list[Reference]:
    """``reference: {STAGE: {LABEL: value}}``; a value is a number (the published mean) or a
    mapping with ``mean`` and optional ``std``, ``n``, ``values`` (per-seed numbers; they give
    mean, std and n when those are left out), ``source`` (e.g. "Table 2") and ``metric`` (by
    default the setting's headline ``metric``)."""
    out = []
    base = f"{prefix}reference"
    if not isinstance(raw, dict):
        raise UserError("expected a mapping of stage -> {label: value}", file=file, key=base,
                        hint="e.g. `reference: {AB: {RR6: 0.997}}`")
    for stage, entries in raw.items():
        key = f"{base}.{stage}"
        if stage not in rows:
            raise UserError(f"no stage {stage!r} in this setting", file=file, key=key,
                            hint=suggest(str(stage), rows))
        if not isinstance(entries, dict):
            raise UserError("expected a mapping of row label -> value", file=file, key=key,
                            hint=f"e.g. `{stage}: {{{rows[stage][0]}: 0.97}}`")
        for label, value in entries.items():
            lkey = f"{key}.{label}"
            if label not in rows[stage]:
                raise UserError(f"stage {stage!r} has no row {label!r}", file=file, key=lkey,
                                hint=suggest(str(label), rows[stage]))
            out.append(_reference_value(stage, str(label), value, file, lkey, metric))
    return out


def _number(value, file, key) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"expected a number, got {value!r}", file=file, key=key,
                        hint="YAML reads 1e-3 as a string: write 1.0e-3")
    return float(value)


def _reference_value(stage: str, label: str, value, file: str, key: str, metric: str) -> Reference:
    if not isinstance(value, dict):
        return Reference(stage, label, _number(value, file, key), metric=final_metric(metric))
    for k in value:
        if k not in REFERENCE_KEYS:
            raise UserError(f"unknown key {k!r}", file=file, key=f"{key}.{k}",
                            hint=suggest(str(k), REFERENCE_KEYS))
    values = value.get("values") or []
    if not isinstance(values, list):
        raise UserError("`values` is a list of per-seed numbers", file=file, key=f"{key}.values")
    values = tuple(_number(v, file, f"{key}.values[{i}]") for i, v in enumerate(values))
    if "mean" in value:
        mu = _number(value["mean"], file, f"{key}.mean")
    elif values:
        mu = mean(values)
    else:
        raise UserError("a reference needs `mean` or `values`", file=file, key=key)
    std = _number(value["std"], file, f"{key}.std") if "std" in value else None
    if std is None and len(values) >= 2:
        std = sample_std(values)
    n = value.get("n", len(values) or None)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise UserError(f"`n` is a positive count, got {n!r}", file=file, key=f"{key}.n")
    return Reference(stage, label, mu, std, n, values, str(value.get("source", "")),
                     final_metric(str(value.get("metric", metric))))


# ------------------------------------------------------------------------------------------------
# Verdicts
# ------------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """The outcome of one claim and the numbers behind it."""

    claim: Claim
    setting: str
    verdict: str
    reason: str
    test: Any = None  # stats.TTest of the claim's hypothesis, when one could be run
    against: Any = None  # stats.TTest of the refuting hypothesis
    threshold: float = math.nan  # what d must exceed for the claim (0 or -margin)
    refute_below: float = math.nan  # d below this refutes it (margin or -margin)
    margin: float = math.nan  # the absolute margin used
    diff_ci: tuple[float, float] = (math.nan, math.nan)  # 95% bootstrap interval of d
    left_values: dict[int, float] = field(default_factory=dict)
    right_values: dict[int, float] = field(default_factory=dict)
    #: the convergence of the sides' rows, in one phrase (``harness.convergence.claim_note``)
    convergence: str = ""

    def summary(self) -> str:
        """One line with the numbers: what the CLI prints and the parent run's tag describes."""
        t = self.test
        head = f"{self.claim.text} [{self.claim.metric}]: {self.verdict}"
        tail = f"; convergence: {self.convergence}" if self.convergence else ""
        if t is None:
            return f"{head} ({self.reason}{tail})"
        left, _, right = self.claim.canonical
        return (f"{head} ({'paired' if t.kind == 'paired' else 'Welch'} t, n={t.n_left}"
                f"{'' if t.kind == 'paired' else f'/{t.n_right}'}: {left} {t.mean_left:.4g} vs "
                f"{right} {t.mean_right:.4g}, d={t.diff:+.4g}, 95% lower bound {t.bound():+.4g} "
                f"vs {self.threshold:+.4g}, p={p_text(t.p)}, {t.effect_name}={t.effect:.3g}; "
                f"{self.reason}{tail})")

    def as_dict(self) -> dict:
        return {
            "setting": self.setting, "claim": self.claim.text, "metric": self.claim.metric,
            "verdict": self.verdict, "reason": self.reason, "margin": self.margin,
            "threshold": self.threshold, "refute_below": self.refute_below,
            "test": self.test.as_dict() if self.test else None,
            "against": self.against.as_dict() if self.against else None,
            "diff_ci95": list(self.diff_ci),
            "left": {str(k): v for k, v in sorted(self.left_values.items())},
            "right": {str(k): v for k, v in sorted(self.right_values.items())},
            "convergence": self.convergence,
        }


def evaluate(claim: Claim, left: dict[int, float], right: dict[int, float], *, setting: str = "",
             alpha: float = ALPHA) -> Verdict:
    """Decide a claim from per-replicate values of both sides (replicate -> metric value) as
    written, i.e. ``left`` is the value of ``claim.left``."""
    hi_side, op, lo_side = claim.canonical
    hi, lo = (left, right) if hi_side == claim.left else (right, left)
    hi = {r: v for r, v in hi.items() if v is not None and math.isfinite(v)}
    lo = {r: v for r, v in lo.items() if v is not None and math.isfinite(v)}
    verdict = Verdict(claim, setting, INCONCLUSIVE, "", left_values=dict(left),
                      right_values=dict(right))
    few = [f"{side} has {len(vals)} seed{'s' if len(vals) != 1 else ''}"
           for side, vals in ((hi_side, hi), (lo_side, lo)) if len(vals) < MIN_SEEDS]
    if few:
        verdict.reason = "too few seeds: " + ", ".join(few) + f" (a test needs {MIN_SEEDS})"
        return verdict
    paired = sorted(hi) == sorted(lo)
    keys = sorted(hi)
    a = [hi[k] for k in keys] if paired else [hi[k] for k in sorted(hi)]
    b = [lo[k] for k in keys] if paired else [lo[k] for k in sorted(lo)]
    written_right = lo if lo_side == claim.right else hi  # a relative margin scales with it
    margin = (claim.margin * abs(sum(written_right.values()) / len(written_right)) if claim.relative
              else claim.margin)
    threshold, refute = (0.0, margin) if op == ">" else (-margin, -margin)
    test_fn = paired_t if paired else welch_t
    verdict.test = test_fn(a, b, delta=threshold, alternative="greater")
    verdict.against = test_fn(a, b, delta=refute, alternative="less")
    verdict.threshold, verdict.refute_below, verdict.margin = threshold, refute, margin
    verdict.diff_ci = bootstrap_diff_ci(a, b, paired=paired)
    supported = verdict.test.p < alpha
    refuted = verdict.against.p < alpha
    lower, upper = verdict.test.bound(1 - alpha, "lower"), verdict.test.bound(1 - alpha, "upper")
    if supported:
        verdict.verdict = REPRODUCED
        verdict.reason = f"the one-sided {1 - alpha:.0%} lower bound of d, {lower:+.4g}, exceeds {threshold:+.4g}"
        if op == ">" and refuted:
            verdict.reason += f", though d is smaller than the margin {margin:.4g}"
    elif refuted:
        verdict.verdict = NOT_REPRODUCED
        what = (f"an improvement of {margin:.4g} or more" if op == ">"
                else f"being at most {margin:.4g} worse")
        verdict.reason = (f"the one-sided {1 - alpha:.0%} upper bound of d, {upper:+.4g}, is below "
                          f"{refute:+.4g}: the data rule out {what}")
    elif math.isnan(verdict.test.p):
        verdict.reason = "no spread and no difference: the test is undefined"
    else:
        verdict.reason = (f"interval too wide: d lies between {lower:+.4g} and {upper:+.4g} "
                          f"(one-sided {1 - alpha:.0%} bounds), which neither clears "
                          f"{threshold:+.4g} nor falls below {refute:+.4g}")
    return verdict
