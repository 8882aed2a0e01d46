"""``harness plugins --check``: the kit run on every installed plugin, one row per name.

Options cannot be known for a plugin that needs some (a split point, a data folder), so each
name is checked with its defaults; a name that cannot be built or exercised that way (an error
other than a failed check) is reported as such, with the reason and how to check it with the
kit, rather than as a broken contract. A method that reads upstream stages through ``refs:``
gets the suite defaults' baseline method as each (what ``harness.testing.needs`` finds it
looks up), and its row says so. Architectures are probed on a few common input shapes and
checked on those they build for.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError, suggest
from . import architecture, checks_for, dataset, evaluator, method
from .method_checks import CheckFailed, MethodUnderTest

__all__ = ["CheckRow", "check_installed", "PROBE_SHAPES"]

PROBE_SHAPES = ((1, 8, 8), (1, 28, 28), (3, 32, 32), (12,))
_KINDS = {"methods": method, "datasets": dataset, "architectures": architecture,
          "evaluators": evaluator}


@dataclass
class CheckRow:
    plugin: str
    kind: str
    name: str
    passed: list[str]
    failed: dict[str, str]
    error: str | None = None
    #: how it was checked beyond its defaults (the references it was given)
    note: str = ""


def _claimed_shapes(factory) -> list[tuple[int, ...]]:
    shapes = []
    for shape in PROBE_SHAPES:
        try:
            factory(shape, 10)
        except Exception:  # noqa: BLE001  a shape the network is not made for
            continue
        shapes.append(shape)
    return shapes


def _method(entry, row: CheckRow):
    """The method with its defaults, and the baseline method as every upstream stage it reads
    (``refs:``); refused with how to check it when it cannot be built so."""
    probe = MethodUnderTest(entry.obj, name=entry.name)
    if probe.refs_asked and probe.baseline:
        refs = {r: probe.baseline for r in probe.refs_asked}
        row.note = "refs: " + ", ".join(f"{r}={m}" for r, m in refs.items())
        probe = MethodUnderTest(entry.obj, refs=refs, name=entry.name)
    if probe.build_problem:
        raise UserError(probe.build_problem, hint="check it with harness.testing.check_method("
                                                  f"{entry.obj.__name__}, {{OPTION: VALUE}}, "
                                                  "refs={...}) in its package's tests")
    return method(entry.obj, refs=probe.refs)


def _row(entry, kind: str) -> CheckRow:
    row = CheckRow(entry.plugin, kind[:-1], entry.name, [], {})
    try:
        if kind == "architectures":
            shapes = _claimed_shapes(entry.obj)
            if not shapes:
                raise UserError(f"builds for none of the probe shapes {PROBE_SHAPES}")
            plugin = architecture(entry.obj, shapes=shapes)
        elif kind == "methods":
            plugin = _method(entry, row)
        else:
            plugin = _KINDS[kind](entry.obj)
        checks = checks_for(plugin)
    except Exception as exc:  # noqa: BLE001  reported: cannot be checked with default options
        row.error = f"not checkable with its default options: {type(exc).__name__}: {exc}"
        return row
    for name, run in checks:
        try:
            run()
            row.passed.append(name)
        except CheckFailed as exc:
            row.failed[name] = str(exc)
        except Exception as exc:  # noqa: BLE001  missing files, a method it cannot measure, ...
            # not a broken contract but a plugin the defaults cannot exercise (a data set whose
            # files are absent, an evaluator of two-network methods given one network): said
            # as such, and the remaining checks of the name are not run
            row.error = f"not checkable with its default options: {type(exc).__name__}: {exc}"
            row.passed.clear()
            return row
    return row


def check_installed(plugins, only: list[str] | None = None) -> list[CheckRow]:
    """One row per registered method, dataset, architecture and evaluator (of the plugins named
    in ``only``, if given)."""
    if only:
        known = {info.name for info in plugins.describe()}
        for name in only:
            if name not in known:
                raise UserError(f"no plugin {name!r} is loaded", key="--check",
                                hint=suggest(name, known) or "see `harness plugins`")
    rows = []
    for kind in _KINDS:
        for name in plugins.registry(kind).names():
            entry = plugins.get(kind, name)
            if only and entry.plugin not in only:
                continue
            rows.append(_row(entry, kind))
    return rows
