"""Checking a loaded suite against the installed plugins: every name is registered and every
option is accepted by its plugin's signature (``harness.plugins.check_options``), with the
core's own options (an evaluator's ``every`` and ``on``, every data set's data options) checked
here, before any data is built."""

from __future__ import annotations

from ..data_options import check_data_options, split_data_options
from ..errors import UserError
from ..plugins import check_options
from .model import PluginRef, Suite
from .schema import AXES


KINDS = {"dataset": ("datasets", 1), "architecture": ("architectures", 2),
         "method": ("methods", 2), "evaluator": ("evaluators", 0)}


def check_plugins(suite: Suite, plugins) -> None:
    """Every name in the suite is registered and every option is accepted by its plugin."""
    for setting in suite.settings:
        for axis, refs in setting.grid.items():
            for ref in refs:
                _check_axis(suite, plugins, ref, axis)
        for ref in setting.evaluate:
            _check_ref(suite, plugins, ref, "evaluator")
        for st in setting.stages.values():
            for axis in AXES:
                if getattr(st, axis) is not None:
                    _check_axis(suite, plugins, getattr(st, axis), axis)
            for ref in st.evaluate or []:
                _check_ref(suite, plugins, ref, "evaluator")


def _check_axis(suite: Suite, plugins, ref, axis: str) -> None:
    for one in (ref.refs() if axis == "dataset" else [ref]):
        _check_ref(suite, plugins, one, axis)


def _check_ref(suite: Suite, plugins, ref: PluginRef, kind: str) -> None:
    registry, skip = KINDS[kind]
    options = ref.opts
    if kind == "evaluator":  # `every` and `on` belong to the core's scheduling
        _check_schedule(suite, ref, options.pop("on", []), options.pop("every", 1))
    if kind == "dataset":  # the core's data options, which every data set has
        options, data_options = split_data_options(options)
    try:
        entry = plugins.get(registry, ref.name)
        check_options(entry, options, skip=skip)
        if kind == "dataset":
            check_data_options({k: (0 if k == "subset_seed" and v == "replicate" else v)
                                for k, v in data_options.items()})
    except UserError as err:
        raise err.under(ref.key, file=suite.path, own=(ref.name,)) from None


def _check_schedule(suite: Suite, ref: PluginRef, on, every) -> None:
    if not (isinstance(on, str) or (isinstance(on, list) and all(isinstance(r, str) for r in on))):
        raise UserError(f"on names data roles to measure, got {on!r}", file=suite.path,
                        key=f"{ref.key}.on", hint="e.g. `{name: NAME, on: [target, source]}`")
    if every != "end" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise UserError(f"every must be a positive epoch interval or `end`, got {every!r}",
                        file=suite.path, key=f"{ref.key}.every",
                        hint="e.g. `{name: NAME, every: 5}`")
