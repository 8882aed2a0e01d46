"""Plugin loading and the name registries the hooks fill.

Built-in plugins and third-party plugins load the same way: through the ``harness`` entry-point
group. ``HARNESS_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only this distribution's own entry points (the
built-ins), so a broken third-party package cannot stop a run; ``HARNESS_DISABLE_PLUGINS=a,b``
leaves out the entry points (or packages) named, so that of two plugins that register one name
the other one can run; ``--plugin module.path`` (or ``HARNESS_PLUGINS=a.b,c.d``) loads more
modules for one invocation.

A name two plugins register is a clash: which one a suite means is unknowable, so a command that
runs or checks a suite refuses it, while ``harness plugins`` and ``harness list`` load the
plugins anyway (``strict=False``) and show it, so that the author can see what to disable.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import UserError, suggest
from .option_types import annotation_of, describe, matches
from .plugin_import import import_failure, import_spec, is_file_spec

DIST_NAME = "harness"
ENTRY_POINT_GROUP = "harness"
KINDS = ("datasets", "architectures", "methods", "evaluators", "executors")
AUTOLOAD_ENV = "HARNESS_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_ENV = "HARNESS_DISABLE_PLUGINS"
EXTRA_PLUGINS_ENV = "HARNESS_PLUGINS"


@dataclass(frozen=True)
class Entry:
    """One registered name: what it builds and which plugin (and version) registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str
    version: str
    description: str = ""

    def describe(self) -> str:
        if self.description:
            return self.description
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass
class Registry:
    """All names of one kind. Lookups of unknown names fail with the nearest names suggested."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    #: name -> the entries that registered it after the first (``entries``' own)
    clashes: dict[str, list[Entry]] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        if entry.name in self.entries:
            self.clashes.setdefault(entry.name, []).append(entry)
            return
        self.entries[entry.name] = entry

    def clash_error(self, name: str) -> UserError:
        first, *others = [self.entries[name], *self.clashes[name]]
        plugins = " and by plugin ".join(repr(e.plugin) for e in [first, *others])
        return UserError(
            f"{self.kind[:-1]} {name!r} is registered twice: by plugin {plugins}",
            hint=f"uninstall one of them, leave one out with {DISABLE_ENV}={others[0].plugin}, "
                 "or rename one registration; `harness plugins` lists every clash")

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind[:-1]} {name!r}",
                            hint=suggest(name, self.entries)) from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    hooks: list[str]
    registers: dict[str, list[str]]
    #: of ``registers``, the names another plugin registers too
    clashes: dict[str, list[str]] = field(default_factory=dict)


class Plugins:
    """The loaded plugin manager plus its filled registries."""

    def __init__(self, extra_modules: list[str] | tuple[str, ...] = (), *,
                 autoload: bool | None = None, strict: bool = True, environment: bool = True):
        """``strict``: refuse a name two plugins register (``harness plugins`` and ``list``
        show it instead); ``environment``: obey ``HARNESS_PLUGINS`` and
        ``HARNESS_DISABLE_PLUGINS`` (the conformance kit loads the built-ins alone)."""
        self.pm = pluggy.PluginManager("harness")
        self.pm.add_hookspecs(hookspecs)
        self.versions: dict[str, str] = {}
        self.extra_modules = tuple(extra_modules)
        if autoload is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        self._load_entry_points(third_party=autoload,
                                disabled=_env_list(DISABLE_ENV) if environment else [])
        env_extra = _env_list(EXTRA_PLUGINS_ENV) if environment else []
        for module in env_extra:
            self.load_module(module, source=EXTRA_PLUGINS_ENV)
        for module in self.extra_modules:
            self.load_module(module)
        self.registries = {kind: Registry(kind) for kind in KINDS}
        self._fill_registries()
        if strict:
            for registry in self.registries.values():
                for name in registry.clashes:
                    raise registry.clash_error(name)
        for name in [*env_extra, *self.extra_modules]:
            self._warn_if_empty(name)

    def clashes(self) -> list[tuple[str, str, list[str]]]:
        """(kind, name, the plugins that register it) for every name registered twice."""
        return [(kind, name, [r.entries[name].plugin, *(e.plugin for e in others)])
                for kind, r in self.registries.items() for name, others in r.clashes.items()]

    # -- loading ---------------------------------------------------------------------------
    def _load_entry_points(self, *, third_party: bool, disabled: list[str]) -> None:
        entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        known = {ep.name for ep in entry_points} | {ep.dist.name for ep in entry_points if ep.dist}
        for name in disabled:
            if name not in known:
                raise UserError(f"no installed plugin {name!r} to leave out", key=DISABLE_ENV,
                                hint=suggest(name, known) or "see `harness plugins` for the names")
        for ep in entry_points:
            dist = ep.dist.name if ep.dist is not None else "?"
            if (not third_party and dist != DIST_NAME) or ep.name in disabled or dist in disabled:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin package: say which, never a traceback
                raise import_failure(
                    f"plugin {ep.name!r} (package {dist})", exc,
                    hint=f"fix or uninstall {dist}, or set {AUTOLOAD_ENV}=1 to load "
                         "only the built-in plugins") from None
            version = ep.dist.version if ep.dist is not None else "0"
            self._register(module, ep.name, version)

    def load_module(self, spec: str, *, source: str = "--plugin") -> None:
        """Load one more plugin module: a dotted module path (the current folder is searched
        last, as ``python -m`` would) or a ``.py`` file. ``source`` names where it was asked
        for (``--plugin`` or ``HARNESS_PLUGINS``), for the error message."""
        if self.pm.get_plugin(spec) is not None:
            return
        try:
            module = import_spec(spec)
        except UserError as err:
            raise err.located(key=source) from None
        except Exception as exc:
            not_found = (isinstance(exc, ModuleNotFoundError) and not is_file_spec(spec)
                         and exc.name == spec.split(".")[0])  # no such module, not a dependency
            hint = None
            if not_found:
                hint = "give an importable dotted module path or a .py file" + (
                    f" in {EXTRA_PLUGINS_ENV}=a.b,c.d" if source == EXTRA_PLUGINS_ENV else "")
            raise import_failure(f"plugin module {spec!r}", exc, hint).located(key=source) from None
        version = str(getattr(module, "__version__", "0"))
        self._register(module, spec, version)

    def _warn_if_empty(self, name: str) -> None:
        """A module loaded by name that implements no hook, or registers no name through the
        registration hooks it implements, is most likely not the module meant."""
        module = self.pm.get_plugin(name)
        hooks = {h.name for h in self.pm.get_hookcallers(module) or []}
        registered = any(e.plugin == name for r in self.registries.values() for e in r.entries.values())
        if not registered and not hooks - {f"harness_register_{k}" for k in KINDS}:
            print(f"harness: warning: plugin module {name!r} registers nothing (no dataset, "
                  "architecture, method, evaluator or executor, and no lifecycle hook)",
                  file=sys.stderr)

    def _register(self, module, name: str, version: str) -> None:
        try:
            self.pm.register(module, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            raise UserError(f"plugin {name!r} is invalid: {exc}",
                            hint="hook implementations must be named after a hook in "
                                 "harness.hookspecs, e.g. harness_register_methods") from None
        self.versions[name] = version

    # -- registries ------------------------------------------------------------------------
    def _fill_registries(self) -> None:
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"harness_register_{kind}")
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name
                version = self.versions.get(plugin_name, "0")

                def register(name, obj, description=None, *, _kind=kind, _plugin=plugin_name,
                             _version=version):
                    self.registries[_kind].add(Entry(_kind, str(name), obj, _plugin, _version,
                                                     description or ""))

                impl.function(register=register)

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> Entry:
        return self.registries[kind].get(name)

    def describe(self) -> list[PluginInfo]:
        by_plugin: dict[str, dict[str, list[str]]] = {}
        clashing: dict[str, dict[str, list[str]]] = {}
        for kind, registry in self.registries.items():
            for entry in [*registry.entries.values(), *(e for es in registry.clashes.values()
                                                        for e in es)]:
                by_plugin.setdefault(entry.plugin, {}).setdefault(kind, []).append(entry.name)
                if entry.name in registry.clashes:
                    clashing.setdefault(entry.plugin, {}).setdefault(kind, []).append(entry.name)
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            infos.append(PluginInfo(name=name, module=getattr(plugin, "__name__", str(plugin)),
                                    version=self.versions.get(name, "0"), hooks=hooks,
                                    registers={k: sorted(v) for k, v in
                                               by_plugin.get(name, {}).items()},
                                    clashes={k: sorted(v) for k, v in
                                             clashing.get(name, {}).items()}))
        return sorted(infos, key=lambda i: i.name)


def check_options(entry: Entry, options: dict, *, skip: int = 0) -> None:
    """Refuse options the plugin's factory does not accept, naming the nearest accepted ones,
    and values of another type than the parameter's annotation (``harness.option_types``).

    ``skip`` is the number of leading positional parameters the core itself passes (the model
    and context of a method, the shape and class count of an architecture, ...).
    """
    target = entry.obj.__init__ if inspect.isclass(entry.obj) else entry.obj
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return
    if inspect.isclass(entry.obj):
        params = params[1:]  # self
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name: p for p in params[skip:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for key in options:
        if key not in accepted:
            raise UserError(f"{entry.kind[:-1]} {entry.name!r} has no option {key!r}",
                            key=key, hint=suggest(key, accepted) or f"{entry.name} takes no options")
    for key, value in options.items():
        ann = annotation_of(accepted[key], target)
        if not matches(ann, value):
            raise UserError(f"option {key!r} of {entry.kind[:-1]} {entry.name!r} must be "
                            f"{describe(ann)}, got {_value_repr(value)}", key=key,
                            hint=_type_hint(key, value))


def _value_repr(value) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({'text' if isinstance(value, str) else type(value).__name__})"


def _type_hint(key: str, value) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:
            return "YAML reads 1e-3 as a string and quotes make any value one: write 1.0e-3, unquoted"
    return f"the annotation of {key!r} in the plugin's signature says what it takes"


_cache: dict[tuple, Plugins] = {}


def load(extra_modules: list[str] | tuple[str, ...] = (), *, strict: bool = True) -> Plugins:
    """The process-wide plugins for these extra modules (loading entry points is not free)."""
    key = (tuple(extra_modules), strict, os.environ.get(AUTOLOAD_ENV, ""),
           os.environ.get(EXTRA_PLUGINS_ENV, ""), os.environ.get(DISABLE_ENV, ""), tuple(sys.path))
    if key not in _cache:
        _cache[key] = Plugins(extra_modules, strict=strict)
    return _cache[key]


def _env_list(variable: str) -> list[str]:
    return [m.strip() for m in os.environ.get(variable, "").split(",") if m.strip()]
