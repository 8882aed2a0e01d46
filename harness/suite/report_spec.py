"""What a suite asks its report to show beyond test accuracy: a setting's ``report:`` key.

The headline metric (``metric:``, every setting's first table, its claims' and references'
default) and the baseline method (``baseline:``, the rows the cost table divides by) are the
suite's to name; a setting without them takes the plugins' defaults (``harness.suite.defaults``).
A paper's point is often another number too (the
swapped-head accuracy of paper 001, a feature correlation, a reconstruction error), and some
figures plot a metric against a design choice (paper 001's Fig. 4: swapped accuracy against the
layer the networks are split at). The report cannot guess which of the metrics evaluators log
matter, so the suite says so::

    report:
      baseline: std                             # a method name
      metric: test_acc                          # a metric the evaluators log
      metrics: [swapped_acc, feature_corr]      # one mean ± std (n) table each
      sweeps:                                   # one table per y and one figure
        - x: split_depth                        # a metric every run of the lines logs
          y: [swapped_acc, feature_corr]
          lines:                                # a line per name: the rows it joins, by label
            rotation: [rotation_stem, rotation_stage1]
            independent: [independent_stem, independent_stage1]
      convergence:                              # how harness.convergence judges each row
        margin: 0.01                            # the gain that counts, in the metrics' units
        loss: loss                              # the training loss judged beside them: a name,
                                                # a list (the first a row logs), or none

Metric names are those the runs log, with or without the ``final_`` prefix of the summary
value. Row labels are checked against the setting's stages when the suite is loaded, so a typo
is a suite error (exit 2) and not an empty figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..claims import final_metric
from ..errors import UserError, suggest
from .defaults import Lazy

REPORT_KEYS = ("baseline", "metric", "metrics", "sweeps", "convergence")
CONVERGENCE_KEYS = ("margin", "loss")
#: the per-epoch training loss the engine logs: the sum of a method's terms
TRAINING_LOSS = "loss"
SWEEP_KEYS = ("x", "y", "lines", "stage", "title")


@dataclass(frozen=True)
class Sweep:
    """y against x, one line per named group of rows of one stage."""

    x: str
    y: tuple[str, ...]
    lines: tuple[tuple[str, tuple[str, ...]], ...]
    stage: str
    title: str = ""


@dataclass(frozen=True)
class ReportSpec:
    metric: str = ""  # the headline metric, ``final_`` prefixed
    baseline: str | None = None
    metrics: tuple[str, ...] = ()
    sweeps: tuple[Sweep, ...] = ()
    #: the gain over a quarter of the epochs that counts as still improving (None: the rule's)
    convergence_margin: float | None = None
    #: the training loss judged beside the metrics: of these names, the first a row logs
    convergence_loss: tuple[str, ...] = (TRAINING_LOSS,)
    defaults: Lazy = field(default_factory=lambda: Lazy(None), compare=False, repr=False)

    @property
    def metric_title(self) -> str:
        """How headings name the headline metric: the plugins' title for it, else its name."""
        short = self.metric.removeprefix("final_")
        return self.defaults.get().metric_titles.get(short, short.replace("_", " "))


def parse_report(value, rows: dict[str, list[str]], *, file: str, prefix: str = "",
                 defaults: Lazy | None = None) -> ReportSpec:
    """Validate a setting's ``report:`` against its stages' row labels (``stage_rows``)."""
    key = f"{prefix}report"
    defaults = defaults or Lazy(None)

    def fail(where: str, message: str, hint: str | None = None):
        raise UserError(message, file=file, key=where, hint=hint)

    value = {} if value is None else value
    if not isinstance(value, dict):
        fail(key, "report is a mapping", "e.g. `report: {metrics: [swapped_acc]}`")
    for k in value:
        if k not in REPORT_KEYS:
            fail(f"{key}.{k}", f"unknown key {k!r}", suggest(str(k), REPORT_KEYS))
    metric = value["metric"] if "metric" in value else defaults.get().metric
    baseline = value["baseline"] if "baseline" in value else defaults.get().baseline
    for k, v in (("metric", metric), ("baseline", baseline)):
        if not isinstance(v, str) or not v:
            fail(f"{key}.{k}", f"{k} names a {'logged metric' if k == 'metric' else 'method'}, "
                               f"got {v!r}", f"e.g. `report: {{{k}: ...}}`; no plugin gives a default")
    metrics = _names(value.get("metrics", []), f"{key}.metrics", fail)
    sweeps_raw = value.get("sweeps", [])
    if not isinstance(sweeps_raw, list):
        fail(f"{key}.sweeps", "sweeps are a list of mappings",
             "e.g. `- {x: split_depth, y: [swapped_acc], lines: {rotation: [rot_a, rot_b]}}`")
    sweeps = tuple(_sweep(raw, rows, f"{key}.sweeps[{i}]", fail) for i, raw in enumerate(sweeps_raw))
    margin, loss = _convergence(value.get("convergence", {}), f"{key}.convergence", fail)
    return ReportSpec(metric=final_metric(metric), baseline=baseline, metrics=metrics,
                      sweeps=sweeps, convergence_margin=margin, convergence_loss=loss,
                      defaults=defaults)


def _convergence(raw, where: str, fail) -> tuple[float | None, tuple[str, ...]]:
    """``convergence: {margin: M, loss: NAME | [NAME, ...] | none}``: the margin in the
    metrics' units; the per-epoch training loss, the first of the names a row logs (a method
    whose total loss changes meaning between its phases, as CETL's three stages do, names the
    term that means the same throughout, e.g. ``[loss_stage3_ce, loss]``), or ``none``."""
    if not isinstance(raw, dict):
        fail(where, "convergence is a mapping", "e.g. `convergence: {margin: 0.01, loss: loss}`")
    for k in raw:
        if k not in CONVERGENCE_KEYS:
            fail(f"{where}.{k}", f"unknown key {k!r}", suggest(str(k), CONVERGENCE_KEYS))
    margin = raw.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not 0 <= margin < math.inf):
        fail(f"{where}.margin", f"the margin is a non-negative number, got {margin!r}",
             "e.g. `margin: 0.01` (one accuracy point); YAML reads 1e-3 as a string: write 1.0e-3")
    loss = raw.get("loss", TRAINING_LOSS)
    names = [] if loss in (None, False, "none") else [loss] if isinstance(loss, str) else loss
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        fail(f"{where}.loss", f"loss names a per-epoch metric, got {loss!r}",
             "e.g. `loss: loss` (the sum of the terms), `loss: [loss_stage3_ce, loss]`, or "
             "`loss: none`")
    return (None if margin is None else float(margin)), tuple(n.removeprefix("final_") for n in names)


def _sweep(raw, rows: dict[str, list[str]], where: str, fail) -> Sweep:
    """One ``sweeps:`` entry, its rows checked against the stage it plots."""
    if not isinstance(raw, dict):
        fail(where, "a sweep is a mapping with x, y and lines",
             "e.g. `{x: split_depth, y: [swapped_acc], lines: {rotation: [rot_a, rot_b]}}`")
    for k in raw:
        if k not in SWEEP_KEYS:
            fail(f"{where}.{k}", f"unknown key {k!r}", suggest(str(k), SWEEP_KEYS))
    for k in ("x", "y", "lines"):
        if k not in raw:
            fail(where, f"a sweep needs `{k}:`", "x and y name logged metrics, lines group rows")
    if not isinstance(raw["x"], str) or not raw["x"]:
        fail(f"{where}.x", f"x names one logged metric, got {raw['x']!r}", "e.g. `x: split_depth`")
    y = _names([raw["y"]] if isinstance(raw["y"], str) else raw["y"], f"{where}.y", fail)
    if not y:
        fail(f"{where}.y", "y names at least one logged metric", "e.g. `y: [swapped_acc]`")
    stage = raw.get("stage")
    if stage is None:
        if len(rows) != 1:
            fail(where, "this setting has several stages: say which one the sweep plots",
                 f"add `stage:` ({', '.join(rows)})")
        stage = next(iter(rows))
    if stage not in rows:
        fail(f"{where}.stage", f"no stage {stage!r} in this setting", suggest(str(stage), rows))
    lines = raw["lines"]
    if not isinstance(lines, dict) or not lines:
        fail(f"{where}.lines", "lines map a line's name to the row labels it joins",
             "e.g. `{rotation: [rotation_stem, rotation_stage1]}`")
    parsed = []
    for name, labels in lines.items():
        labels = _names(labels, f"{where}.lines.{name}", fail, metric=False)
        for label in labels:
            if label not in rows[stage]:
                fail(f"{where}.lines.{name}", f"stage {stage!r} has no row {label!r}",
                     suggest(label, rows[stage]))
        parsed.append((str(name), labels))
    return Sweep(x=final_metric(raw["x"]), y=y, lines=tuple(parsed), stage=str(stage),
                 title=str(raw.get("title", "")))


def _names(value, where: str, fail, metric: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        fail(where, f"expected a list of names, got {value!r}",
             "e.g. `[swapped_acc, feature_corr]`" if metric else "e.g. `[rotation_stem, rotation_stage1]`")
    out = tuple(final_metric(v) if metric else v for v in value)
    if len(set(out)) != len(out):
        fail(where, "a name is listed twice", "list each once")
    return out
