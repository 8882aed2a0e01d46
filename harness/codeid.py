"""Digests of the code a stage run uses, so that its identity changes when that code changes.

A plugin's distribution version does not change when its source is edited (an editable install,
a checkout on the path, a fix not yet released), so an identity built from versions alone would
call a run "finished" that the current code did not produce. The digest covers the source file
of the plugin module that registered a name, the module that defines the registered object, and
every module of the same top-level package they import (found in their source by ``ast``, so
imports inside functions count too). Modules of other packages (torch, the harness core) are
covered by their versions instead.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path

from .tracking import TAG

NO_SOURCE = "no-source"


def _source_file(module_name: str) -> Path | None:
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            return None
        file = spec.origin if spec is not None else None
    return Path(file) if file and Path(file).is_file() else None


def _imports(module_name: str, source: str, is_package: bool) -> set[str]:
    """Module names imported by ``source``: absolute, relative (resolved) and ``from pkg import
    submodule`` (the submodule, when there is one)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    package = module_name if is_package else module_name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level + (node.module or "")) if node.level else (node.module or "")
            try:
                base = importlib.util.resolve_name(base, package) if node.level else base
            except (ImportError, ValueError):
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_files(module_name: str) -> dict[str, Path]:
    """The module and every module of its top-level package that it imports, transitively."""
    top = module_name.split(".")[0]
    seen: dict[str, Path] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        file = _source_file(name)
        if file is None:
            continue
        seen[name] = file
        if file.suffix != ".py":
            continue
        source = file.read_text(encoding="utf-8", errors="replace")
        for dep in _imports(name, source, file.name == "__init__.py"):
            if (dep == top or dep.startswith(top + ".")) and dep not in seen:
                todo.append(dep)
    return seen


def modules_digest(module_names: tuple[str, ...]) -> str:
    """sha256 over the source files of these modules and what they import."""
    files: dict[str, Path] = {}
    for name in module_names:
        files.update(module_files(name))
    if not files:
        return NO_SOURCE
    h = hashlib.sha256()
    for name, file in sorted(files.items()):
        h.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def entry_digest(plugins, entry, cache: dict | None = None) -> str:
    """The digest of the code behind one registered name (see the module docstring); ``cache``
    keeps the digests of one plan, so that each file is read once per plan."""
    cache = {} if cache is None else cache
    key = (entry.kind, entry.name)
    if key not in cache:
        cache[key] = _entry_digest(plugins, entry)
    return cache[key]


def _entry_digest(plugins, entry) -> str:
    names = []
    plugin = plugins.pm.get_plugin(entry.plugin)
    if getattr(plugin, "__name__", None):
        names.append(plugin.__name__)
    defined = inspect.getmodule(entry.obj)
    if defined is not None:
        names.append(defined.__name__)
    return modules_digest(tuple(sorted(set(names))))


def run_code(plugins, run, cache: dict | None = None) -> dict[str, str]:
    """``{"method": digest, "architecture": ..., "dataset": ..., "evaluators.NAME": ...}`` for
    one stage run."""
    code = {kind[:-1]: entry_digest(plugins, plugins.get(kind, ref.name), cache) for kind, ref in
            (("architectures", run.architecture), ("methods", run.method))}
    if run.dataset.multi:  # several data sets by role: one digest each
        for role, ref in run.dataset.roles:
            code[f"datasets.{role}"] = entry_digest(plugins, plugins.get("datasets", ref.name),
                                                    cache)
    else:
        code["dataset"] = entry_digest(plugins, plugins.get("datasets", run.dataset.name), cache)
    for ev in run.evaluate:
        code[f"evaluators.{ev.name}"] = entry_digest(plugins, plugins.get("evaluators", ev.name),
                                                     cache)
    return code


def stale_reason(current: dict[str, str], recorded_tag: str | None, run, upstream_stale: list[str]
                 ) -> str:
    """Why a finished run of the same configuration no longer counts, in words."""
    if not recorded_tag:
        return "its finished run was recorded before code digests were part of identities"
    try:
        recorded = json.loads(recorded_tag)
    except ValueError:
        recorded = {}
    names = {"method": run.method.name, "architecture": run.architecture.name,
             "dataset": run.dataset.name}
    changed = [f"{key.split('.')[0].rstrip('s')} {names.get(key, key.partition('.')[2])!r}"
               for key in sorted(current) if recorded.get(key) != current[key]]
    if changed:
        return "the code of " + ", ".join(changed) + " changed since its finished run"
    if upstream_stale:
        return "upstream " + ", ".join(upstream_stale) + " is stale"
    return "its finished run used other code"


def stale_runs(plan, tracker) -> dict[tuple, str]:
    """Stage runs of the plan that have no finished run of their identity but one of the same
    configuration, data and versions produced by other code: key -> why, for ``harness plan``."""
    if tracker is None:
        return {}
    records = sorted(tracker.runs("FINISHED"), key=lambda r: r.info.start_time or 0)
    finished = {r.data.tags.get(f"{TAG}identity") for r in records}
    by_base = {}
    for run in records:
        tags = run.data.tags
        base = tags.get(f"{TAG}identity_base") or (None if f"{TAG}code" in tags
                                                    else tags.get(f"{TAG}identity"))
        if base:
            by_base[base] = run
    out: dict[tuple, str] = {}
    by_key = {r.key: r for r in plan.runs}
    for run in plan.runs:  # upstream first
        if plan.identities[run.key] in finished or plan.bases.get(run.key) not in by_base:
            continue
        old = by_base[plan.bases[run.key]]
        upstream = [by_key[k].name for k in run.upstream_keys() if k in out]
        why = stale_reason(plan.code.get(run.key, {}), old.data.tags.get(f"{TAG}code"), run,
                           upstream)
        out[run.key] = f"{why} (MLflow run {old.info.run_id})"
    return out
