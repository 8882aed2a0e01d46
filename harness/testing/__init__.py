"""The conformance kit: check that a plugin honours the contracts the harness relies on.

Like scikit-learn's ``check_estimator``::

    from harness.testing import check_method, parametrize_with_checks

    check_method(LabelSmoothing, options={"smoothing": 0.1})        # raises CheckFailed

    @parametrize_with_checks([method(LabelSmoothing, smoothing=0.1)])
    def test_conformance(plugin, check):                             # one pytest case a check
        check(plugin)

Checks choose themselves by what a plugin declares (streams over an unlabelled split, refs,
``amp_safe``), run on CPU in seconds on the kit's tiny data and network, and each says what to
fix. ``expected_failed_checks={"check_name": "why"}`` turns known failures into xfails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .component_checks import architecture_checks, dataset_checks, evaluator_checks
from .method_checks import METHOD_CHECKS, CheckFailed, MethodUnderTest, check_method_builds

__all__ = ["CheckFailed", "check_method", "check_dataset", "check_architecture",
           "check_evaluator", "method", "dataset", "architecture", "evaluator",
           "checks_for", "parametrize_with_checks"]


@dataclass
class PluginUnderTest:
    """One plugin and its options, as ``parametrize_with_checks`` takes them."""

    kind: str
    obj: Any
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    expected_failed_checks: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return getattr(self.obj, "__name__", type(self.obj).__name__)

    @property
    def case_id(self) -> str:
        """The label with the options and references, so that two configurations of one class
        get pytest ids that say which is which (not pytest's ``...0`` and ``...1``)."""
        parts = [f"{k}={_short(v)}" for k, v in self.options.items()]
        parts += [f"refs.{r}={_short(spec.get('name') if isinstance(spec, dict) else spec)}"
                  for r, spec in (self.extra.get("refs") or {}).items()]
        return f"{self.label}({','.join(parts)})" if parts else self.label


def method(cls, *, refs=None, run=None, expected_failed_checks=None, **options):
    return PluginUnderTest("method", cls, options, {"refs": refs or {}, "run": run or {}},
                           expected_failed_checks or {})


def dataset(factory, *, expected_failed_checks=None, **options):
    return PluginUnderTest("dataset", factory, options, {}, expected_failed_checks or {})


def architecture(factory, *, shapes=((1, 8, 8),), classes=(2, 10), expected_failed_checks=None,
                 **options):
    return PluginUnderTest("architecture", factory, options,
                           {"shapes": shapes, "classes": classes}, expected_failed_checks or {})


def evaluator(cls, *, method=None, expected_failed_checks=None, **options):
    """``method``: the spec of the method the evaluator measures (default std), e.g. a
    two-network method for evaluators that compare networks."""
    return PluginUnderTest("evaluator", cls, options, {"method": method},
                           expected_failed_checks or {})


def _short(value) -> str:
    """An option's value in an id: short, and without spaces."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "_".join(_short(v) for v in value)
    else:
        text = str(value)
    text = text.replace(" ", "")
    return text if len(text) <= 24 else text[:21] + "..."


def checks_for(plugin: PluginUnderTest) -> list[tuple[str, Callable[[], None]]]:
    """(name, a call that runs the check) for every check that applies to the plugin."""
    if plugin.kind == "method":
        under = MethodUnderTest(plugin.obj, plugin.options, refs=plugin.extra["refs"],
                                run=plugin.extra["run"])
        if under.build_problem:  # one case that says why, instead of an error at collection
            return [(check_method_builds.__name__, lambda: check_method_builds(under))]
        return [(c.__name__, (lambda c=c: c(under))) for c, applies in METHOD_CHECKS
                if applies(under)]
    if plugin.kind == "dataset":
        return [(c.__name__, (lambda c=c: c(plugin.obj, plugin.options))) for c in dataset_checks()]
    if plugin.kind == "architecture":
        return [(c.__name__, (lambda c=c: c(plugin.obj, plugin.options, plugin.extra["shapes"],
                                            plugin.extra["classes"])))
                for c in architecture_checks()]
    return [(c.__name__, (lambda c=c: c(plugin.obj, plugin.options, plugin.extra["method"])))
            for c in evaluator_checks()]


def _run_all(plugin: PluginUnderTest, on_fail: str) -> dict[str, str | None]:
    """check name -> None (passed) or the failure's message."""
    if on_fail not in ("raise", "warn"):
        raise ValueError("on_fail is 'raise' or 'warn'")
    outcome: dict[str, str | None] = {}
    for name, run in checks_for(plugin):
        try:
            run()
            outcome[name] = None
        except CheckFailed as exc:
            if name in plugin.expected_failed_checks:
                outcome[name] = f"expected: {plugin.expected_failed_checks[name]}"
                continue
            if on_fail == "raise":
                raise CheckFailed(f"{plugin.label}: {name}: {exc}") from None
            warnings.warn(f"{plugin.label}: {name}: {exc}", stacklevel=3)
            outcome[name] = str(exc)
    return outcome


def check_method(cls, options=None, *, refs=None, on_fail="raise", expected_failed_checks=None):
    return _run_all(method(cls, refs=refs, expected_failed_checks=expected_failed_checks,
                           **(options or {})), on_fail)


def check_dataset(factory, options=None, *, on_fail="raise"):
    return _run_all(dataset(factory, **(options or {})), on_fail)


def check_architecture(factory, options=None, *, shapes=((1, 8, 8),), classes=(2, 10),
                       on_fail="raise"):
    return _run_all(architecture(factory, shapes=shapes, classes=classes, **(options or {})),
                    on_fail)


def check_evaluator(cls, options=None, *, method=None, on_fail="raise"):
    return _run_all(evaluator(cls, method=method, **(options or {})), on_fail)


def parametrize_with_checks(plugins: list[PluginUnderTest]):
    """A pytest parametrize mark with one case per (plugin, check), ids
    ``Label(option=value,...)-check_name``, and ``expected_failed_checks`` as xfail; the test body is ``check(plugin)``."""
    import pytest  # the kit runs outside pytest too (check_method, harness plugins --check)

    cases = []
    for plugin in plugins:
        for name, run in checks_for(plugin):
            marks = ()
            if name in plugin.expected_failed_checks:
                marks = pytest.mark.xfail(reason=plugin.expected_failed_checks[name],
                                          raises=CheckFailed, strict=True)
            cases.append(pytest.param(plugin, (lambda _p, run=run: run()),
                                      id=f"{plugin.case_id}-{name}", marks=marks))
    return pytest.mark.parametrize("plugin, check", cases)
