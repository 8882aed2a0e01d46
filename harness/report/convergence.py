"""The report's convergence section: for every row, whether each judged metric was still
improving when training stopped (``harness.convergence``), with the numbers behind it, so that
a reader who sees a mark in a table finds why without opening the store."""

from __future__ import annotations

from ..convergence import CONVERGED, IMPROVING, MARKS, MIN_EVALUATIONS, UNCLEAR, UNJUDGED, WINDOW_START
from .collect import SettingData
from .format import DASH, fin, metric_title, num, table

LEGEND = (f"Marks beside a row in the tables: {MARKS[IMPROVING]} still improving when training "
          f"stopped, {MARKS[UNCLEAR]} unclear (too noisy to tell at this many seeds); no mark: "
          f"converged, or convergence cannot be judged ({MARKS[UNJUDGED]} here: fewer than "
          f"{MIN_EVALUATIONS} evaluations a run, or one seed), which the line under the first "
          "table counts.")


def convergence_line(sd: SettingData) -> list[str]:
    """Under the first table: how many rows are still improving, unclear or not judged, so
    that a row without a mark is not read as converged when it was not judged."""
    counts: dict[str, int] = {}
    for stage, labels in sd.rows.items():
        for label in labels:
            conv = sd.convergence(stage, label)
            if conv is not None:
                counts[conv.state] = counts.get(conv.state, 0) + 1
    if not counts:
        return []
    parts = [f"{counts[s]} {s}" + (f" ({MARKS[s]})" if s != UNJUDGED else "")
             for s in (IMPROVING, UNCLEAR, UNJUDGED) if counts.get(s)]
    if not parts:
        return [f"Convergence: all {counts[CONVERGED]} rows converged (section *Convergence*).", ""]
    why = (f" (fewer than {MIN_EVALUATIONS} evaluations a run, or one seed)"
           if counts.get(UNJUDGED) else "")
    return [f"Convergence of the {sum(counts.values())} rows: " + ", ".join(parts) + why
            + "; section *Convergence* gives the numbers.", ""]


def explain_convergence() -> str:
    """The rule, as the report's "how to read the numbers" states it."""
    return (f"- **convergence** (`harness.convergence`): for each row, the gain a run would still "
            f"make over another quarter of its epochs, from the least-squares slope of the "
            f"metric over the evaluations of its last quarter (epoch >= {WINDOW_START:g} of the "
            "epochs), paired over seeds; *converged* when the one-sided 95% upper bound of the "
            "mean gain is below the margin (in the metric's units: the suite's, else the smallest "
            "margin of the claims on that metric, else 0.01; for the training loss 5% of the "
            "distance it travelled), *still "
            "improving* when the lower bound is above 0, *unclear* otherwise, and *cannot be "
            f"judged* with fewer than {MIN_EVALUATIONS} evaluations a run or one seed. "
            + LEGEND)


def convergence_section(sd: SettingData) -> list[str]:
    """A row per (stage, row, judged metric), in the tables' order."""
    rows = []
    for stage in sd.setting.stages:
        for label in sd.row_order():
            for (st, row, metric), j in sd.judgements.items():
                if st != stage or row != label:
                    continue
                gain = (f"{num(j.gain, '+.3g')} ± {num(j.std, '.3g')} ({j.seeds})"
                        if fin(j.gain) else DASH)
                bounds = f"[{num(j.lower, '+.3g')}, {num(j.upper, '+.3g')}]" if fin(j.lower) else DASH
                rows.append([stage, label, metric_title(metric),
                             f"{MARKS[j.state]} {j.state}".strip(), str(j.evaluations), gain,
                             bounds, num(j.margin, '.3g'), j.reason])
    if not rows:
        return []
    unsettled = sum(1 for r in rows if not r[3].endswith(CONVERGED))
    head = [LEGEND, "",
            f"{unsettled} of {len(rows)} judged metrics did not converge or could not be judged."
            if unsettled else "Every judged metric of every row converged.", ""]
    return head + table(["stage", "method", "metric", "state", "evaluations a run",
                         "gain over a quarter, mean ± std (seeds)", "one-sided 95% bounds",
                         "margin", "why"], rows)
