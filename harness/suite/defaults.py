"""What a suite gets for what it leaves out, and where that comes from: the plugins.

The core knows no evaluator, method or metric by name, so a setting without ``evaluate:``, or
without ``report: {baseline: ..., metric: ...}``, takes what the ``harness_suite_defaults``
hook answers (the built-in plugins answer with the harness's long-standing choices; see
``plugins/defaults.py``). The same hook names the metrics the report's headings spell out
(``metric_titles``), the executors ``harness run`` picks without ``--executor``, and the
plugins the suite of a package ``harness new`` writes runs with (``scaffold``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ..plugins import load


@dataclass(frozen=True)
class SuiteDefaults:
    evaluate: tuple = ()
    baseline: str | None = None
    metric: str | None = None
    metric_titles: dict[str, str] = field(default_factory=dict)
    executors: dict[str, str] = field(default_factory=dict)
    scaffold: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, plugins) -> "SuiteDefaults":
        """Every plugin's answer, the plugin registered last winning key by key."""
        merged: dict[str, Any] = {}
        for answer in reversed(plugins.pm.hook.harness_suite_defaults()):
            merged.update(answer or {})
        return cls(evaluate=tuple(merged.get("evaluate") or ()),
                   baseline=merged.get("baseline"), metric=merged.get("metric"),
                   metric_titles=dict(merged.get("metric_titles") or {}),
                   executors=dict(merged.get("executors") or {}),
                   scaffold=dict(merged.get("scaffold") or {}))


@functools.lru_cache(maxsize=1)
def installed_defaults() -> SuiteDefaults:
    """The defaults of the plugins a plain ``harness`` command loads, for a suite loaded
    without them (a test, a script); loaded once per process."""
    return SuiteDefaults.of(load())


class Lazy:
    """The defaults given, or the installed plugins' when needed and none were given: a suite
    that writes everything out is read without loading a plugin."""

    def __init__(self, given: SuiteDefaults | None):
        self.given = given

    def get(self) -> SuiteDefaults:
        if self.given is None:
            self.given = installed_defaults()
        return self.given
