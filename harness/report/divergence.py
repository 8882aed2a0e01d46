"""The report's section on expected divergence: the rows a suite expects to fail
(``expect_failure:``, ``harness.suite.expectations``), whether they did, and the runs that trained
against the expectation, which the reader must see rather than find them missing."""

from __future__ import annotations

from .collect import FAILED, FINISHED, SKIPPED, ReportData, SettingData
from .format import metric_title, num, table


def divergence_section(data: ReportData) -> list[str]:
    """A table row per setting and reason (the rows the suite expects to fail for it), then a
    line per run that failed as expected or trained anyway."""
    rows, lines = [], []
    for sd in data.settings:
        by_reason: dict[str, list[tuple[str, str]]] = {}  # one reason, one row of the table
        for row, reason in sd.setting.expect_failure.items():
            by_reason.setdefault(reason, []).append(row)
        for reason, named in by_reason.items():
            runs = [p for stage, label in named for p in sd.expected(stage, label)]
            failed = sum(p.state in (FAILED, SKIPPED) for p in runs)
            trained = sum(p.state == FINISHED for p in runs)
            rows.append([sd.setting.name, ", ".join(f"{st}.{label}" for st, label in named),
                         reason, f"{failed} of {len(runs)}", f"{trained} of {len(runs)}"])
        lines += _run_lines(sd)
    if not rows:
        return []
    return (["## Expected divergence", "",
             "The suite expects these rows to fail (`expect_failure:`): their failures are the "
             "finding, not an error, and `harness run` exits 0 for them (and for the runs "
             "skipped because of them). A run that trained although expected to fail is listed "
             "too: the expectation did not hold for it.", ""]
            + table(["setting", "rows", "why the suite expects them to fail", "failed or skipped",
                     "trained anyway"], rows) + lines + ([""] if lines else []))


def _run_lines(sd: SettingData) -> list[str]:
    metric = sd.metric
    out = []
    for p in sd.expected_failures():
        why = p.reason.splitlines()[0][:300] if p.reason else p.state
        out.append(f"- `{p.run.name}`: {p.state} as expected: {why}")
    for p in sd.planned:
        if p.run.expected_failure and p.state == FINISHED:
            value = p.record.metrics.get(metric)
            out.append(f"- `{p.run.name}`: **trained although expected to fail** "
                       f"({metric_title(metric)} {num(value)})")
    return out
