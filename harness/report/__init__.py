"""``harness report``: the runs of a suite, read back from MLflow, as the tables a paper prints.

Which runs count: exactly those ``harness run`` would skip, i.e. the finished stage runs whose
identity matches the suite as loaded now (profile, resolved config, plugin versions, data
fingerprint). Runs of another profile or of older code stay in the store but are left out and
counted, so a table never mixes a smoke run into a default one. For each planned stage run the
report says whether it finished, failed (with the reason), was skipped, is still running or is
missing, so an empty or half-done store gives a report of what is missing rather than an error.

Statistics are those of ``harness.stats``; claims are those of ``harness.claims``. The same
tables go to the parent run of every ``harness run`` invocation (``log_summary``, which the CLI
hands the driver), so the MLflow UI alone tells the story.

The parts: ``store`` reads the runs back, ``collect`` matches them with the plan, ``format``
and ``tables`` write the markdown, ``figures`` and ``artifacts`` the images, ``budget`` the
profile and training budget, ``readme`` the README and the parent run's summary.
"""

from __future__ import annotations

from pathlib import Path

from ..plan import make_plan
from ..suite import Suite
from .budget import choose_profile
from .collect import ReportData, collect
from .figures import metric_range
from .readme import TIMESTAMP_PREFIX, log_summary, render, write_report
from .store import Store

__all__ = ["Store", "ReportData", "TIMESTAMP_PREFIX", "choose_profile", "collect", "log_summary",
           "metric_range", "render", "report_suite", "write_report"]


def report_suite(suite: Suite, plugins, *, home: Path, out: Path, data_root: Path,
                 command: str, force: bool = False) -> tuple[ReportData, Path]:
    """What ``harness report`` does: plan the suite (no training), read the store, write."""
    plan = make_plan(suite, plugins, data_root)
    store = Store.open(home, suite.name)
    data = collect(suite, plan.runs, plan.identities, store)
    return data, write_report(data, store, out, command=command, force=force)
