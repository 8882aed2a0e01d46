"""Loading a suite: the YAML file, the chosen profile, and each setting validated into the typed
``Suite`` (``harness.suite.model``), with every error naming the file, the key path and a hint.

A setting is the suite's top level merged with its entry under ``settings:``; a profile's keys
override every stage's run settings (``stages:`` in a profile, one stage's), its seeds, its
evaluators and its data options (``data:``, the core's options every data set has, applied to
each data set of the stage at expansion, so a smoke profile can shrink the data too). What a setting leaves out of ``evaluate:`` and ``report:`` comes from the plugins'
defaults (``harness.suite.defaults``).
"""

from __future__ import annotations

import copy
import graphlib
import re
from pathlib import Path

from ..claims import check_claims, parse_reference
from ..data_options import DATA_OPTIONS, check_data_options
from ..errors import UserError, suggest
from .defaults import Lazy, SuiteDefaults
from .expansion import own_architecture, stage_rows
from .expectations import parse_expected
from .model import Setting, StageDecl, Suite
from .report_spec import parse_report
from .schema import (AXES, MAX_NAME, PROFILE_KEYS, PROFILE_STAGE_KEYS, RUN_DEFAULTS, SAFE_NAME,
                     SETTING_KEYS, STAGE_KEYS, SUITE_KEYS, Checker)
from .yaml_file import read_yaml

_UNSET = object()


def load_suite(path: str | Path, profile: str | None = None, *,
               defaults: SuiteDefaults | None = None) -> Suite:
    """Load, apply the profile (``default`` when there is one and none is named) and validate;
    ``defaults`` are the loaded plugins' (``SuiteDefaults.of(plugins)``), else the installed
    ones' when the suite needs any."""
    raw = read_yaml(path)
    return parse_suite(raw, str(path), profile, defaults=defaults)


def parse_suite(raw: dict, file: str, profile: str | None = None, *,
                defaults: SuiteDefaults | Lazy | None = None) -> Suite:
    c = Checker(file)
    c.known_keys(raw, "", SUITE_KEYS)
    name = _suite_name(c, raw.get("suite"))
    profiles = c.mapping(raw.get("profiles"), "profiles")
    if profile is None and "default" in profiles:
        profile = "default"
    chosen: dict = {}
    if profile is not None:
        if profile not in profiles:
            c.fail("profiles", f"no profile {profile!r}",
                   suggest(profile, profiles) or "this suite defines no profiles")
        chosen = c.mapping(profiles[profile], f"profiles.{profile}")
        _check_profile(c, chosen, f"profiles.{profile}")
    for pname, pval in profiles.items():
        _check_profile(c, c.mapping(pval, f"profiles.{pname}"), f"profiles.{pname}")

    lazy = defaults if isinstance(defaults, Lazy) else Lazy(defaults)
    base = {k: v for k, v in raw.items() if k in SETTING_KEYS}
    settings_raw = c.mapping(raw.get("settings"), "settings")
    if not settings_raw:
        settings_raw = {name: {}}
    settings = []
    for sname, sval in settings_raw.items():
        c.plain(sname, "settings")
        sval = c.mapping(sval, f"settings.{sname}")
        c.known_keys(sval, f"settings.{sname}", SETTING_KEYS)
        merged = _deep_merge(base, sval)
        # stages of a setting replace the suite's, they are not merged stage by stage
        if "stages" in sval:
            merged["stages"] = sval["stages"]
        prefix = f"settings.{sname}." if raw.get("settings") else ""
        settings.append(_parse_setting(c, str(sname), merged, prefix, chosen, profile, lazy))
    return Suite(name=name, path=file, description=str(raw.get("description", "")),
                 profile=profile, settings=settings, raw=raw, defaults=lazy)


def _suite_name(c: Checker, name) -> str:
    if not isinstance(name, str) or not name.strip():
        c.fail("suite", "every suite needs a name: `suite: <name>`", "e.g. `suite: transfer` on the first line")
    if not SAFE_NAME.fullmatch(name):  # it names the experiment, reports/<name>/, artifacts/<name>/
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:MAX_NAME] or "my-suite"
        c.fail("suite", f"the suite name {name!r} is not a plain file name (letters, digits, "
                        f"'.', '_', '-', at most {MAX_NAME}, not starting with '.' or '-')",
               f"e.g. `suite: {safe}`")
    return name


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _check_profile(c: Checker, prof: dict, key: str) -> None:
    c.known_keys(prof, key, PROFILE_KEYS)
    if not isinstance(prof.get("description", ""), str):  # what the profile cuts, for reports
        c.fail(f"{key}.description", "a profile's description is text",
               "e.g. `description: epochs cut to 200 of the paper's 2000`")
    c.run_settings({k: v for k, v in prof.items() if k in RUN_DEFAULTS}, key)
    if "defaults" in prof:
        c.run_settings(c.mapping(prof["defaults"], f"{key}.defaults"), f"{key}.defaults")
    if "seeds" in prof:
        c.seeds(prof["seeds"], f"{key}.seeds")
    if "data" in prof:
        c.data_options(prof["data"], f"{key}.data")
    for sname, sval in c.mapping(prof.get("stages"), f"{key}.stages").items():
        where = f"{key}.stages.{sname}"
        sval = c.mapping(sval, where)
        c.known_keys(sval, where, PROFILE_STAGE_KEYS)
        c.run_settings({k: v for k, v in sval.items() if k != "data"}, where)
        if "data" in sval:
            c.data_options(sval["data"], f"{where}.data")
    for sname, sval in c.mapping(prof.get("settings"), f"{key}.settings").items():
        sval = c.mapping(sval, f"{key}.settings.{sname}")
        if "settings" in sval:
            c.fail(f"{key}.settings.{sname}.settings", "profiles do not nest settings",
               "override a setting's keys directly under it")
        _check_profile(c, sval, f"{key}.settings.{sname}")


def _profile_layers(prof: dict, setting: str) -> list[dict]:
    """The profile's overrides that apply to a setting, weakest first."""
    layers = [prof]
    sub = (prof.get("settings") or {}).get(setting)
    if sub:
        layers.append(sub)
    return layers


def _layered(raw: dict, layers: list[dict], key: str, default):
    """A setting's value of ``key`` with the profile's layers over it."""
    value = raw.get(key, default)
    for layer in layers:
        value = layer.get(key, value)
    return value


def _parse_setting(c: Checker, sname: str, raw: dict, p: str, prof: dict,
                   profile: str | None, defaults: Lazy) -> Setting:
    layers = _profile_layers(prof, sname)
    run_defaults = dict(RUN_DEFAULTS)
    run_defaults.update(c.run_settings(c.mapping(raw.get("defaults"), f"{p}defaults"),
                                       f"{p}defaults"))
    profile_run: dict = {}
    for layer in layers:
        profile_run.update({k: v for k, v in layer.items() if k in RUN_DEFAULTS})
        profile_run.update(layer.get("defaults") or {})
    profile_run = c.run_settings(profile_run, f"profiles.{profile}")
    grid = _grid(c, raw, p)
    seeds = c.seeds(_layered(raw, layers, "seeds", 1), f"{p}seeds")
    evaluate_raw = _layered(raw, layers, "evaluate", _UNSET)
    if evaluate_raw is _UNSET:  # the plugins' default evaluators
        evaluate_raw = list(defaults.get().evaluate)
    evaluate = c.ref_list(evaluate_raw, f"{p}evaluate", "evaluator")
    stages = _stages(c, raw, p, grid, layers, profile, run_defaults, profile_run)
    for layer in layers:
        for stname in (layer.get("stages") or {}):
            if stname not in stages:
                c.fail(f"profiles.{profile}.stages.{stname}", f"no stage {stname!r} in setting {sname!r}",
                       suggest(str(stname), stages))
    _check_dag(c, stages, p)
    _check_axes(c, stages, grid, p)
    _check_profile_data(c, stages, grid, profile)
    claims = raw.get("claims") or []
    if not isinstance(claims, list) or not all(isinstance(x, str) for x in claims):
        c.fail(f"{p}claims", "claims are a list of strings", 'e.g. `- "AB.RR6 > AB.std"`')
    setting = Setting(name=sname, description=str(raw.get("description", "")),
                      defaults=run_defaults, grid=grid, seeds=seeds, stages=stages,
                      evaluate=evaluate, claims=claims,
                      reference=c.mapping(raw.get("reference"), f"{p}reference"))
    rows = stage_rows(setting)  # claims, references and sweeps name these: checked now
    setting.report = parse_report(raw.get("report"), rows, file=c.file, prefix=p, defaults=defaults)
    check_claims(claims, rows, file=c.file, prefix=p, metric=setting.report.metric)
    parse_reference(setting.reference, rows, file=c.file, prefix=p, metric=setting.report.metric)
    setting.expect_failure = parse_expected(raw.get("expect_failure"), rows, file=c.file, prefix=p)
    return setting


def _grid(c: Checker, raw: dict, p: str) -> dict:
    grid_raw = c.mapping(raw.get("grid"), f"{p}grid")
    c.known_keys(grid_raw, f"{p}grid", AXES)
    grid = {axis: c.ref_list(v, f"{p}grid.{axis}", axis) for axis, v in grid_raw.items()}
    for axis, refs in grid.items():
        if not refs:
            c.fail(f"{p}grid.{axis}", f"grid.{axis} is empty", f"list at least one {axis}")
    return grid


def _stages(c: Checker, raw: dict, p: str, grid: dict, layers: list[dict], profile: str | None,
            run_defaults: dict, profile_run: dict) -> dict[str, StageDecl]:
    stages_raw = raw.get("stages")
    if stages_raw is None:
        if not grid:
            c.fail(f"{p}grid", "the suite has neither a grid nor stages",
                   "add `grid:` with methods, datasets and architectures")
        stages_raw = {"train": {}}
    stages_raw = c.mapping(stages_raw, f"{p}stages")
    if not stages_raw:
        c.fail(f"{p}stages", "no stages", "declare at least one stage, or leave out `stages:`")
    stages: dict[str, StageDecl] = {}
    for stname, sval in stages_raw.items():
        key = f"{p}stages.{stname}"
        c.plain(stname, f"{p}stages")
        sval = c.mapping(sval, key)
        c.known_keys(sval, key, STAGE_KEYS)
        run = dict(run_defaults)
        run.update(c.run_settings({k: v for k, v in sval.items() if k in RUN_DEFAULTS}, key))
        run.update(profile_run)
        data: dict = {}
        for layer in layers:
            own = (layer.get("stages") or {}).get(stname) or {}
            run.update(c.run_settings({k: v for k, v in own.items() if k != "data"},
                                      f"profiles.{profile}.stages.{stname}"))
            data.update(layer.get("data") or {})
            data.update(own.get("data") or {})
        stages[str(stname)] = _stage(c, str(stname), sval, key, run)
        stages[str(stname)].data = data
    return stages


def _check_profile_data(c: Checker, stages: dict[str, StageDecl], grid: dict,
                        profile: str | None) -> None:
    """Each data set with the profile's data options over its own is still a valid one (a
    profile's ``box`` beyond a data set's ``size``), refused under the profile's key."""
    for st in stages.values():
        if not st.data:
            continue
        datasets = [st.dataset] if st.dataset is not None else list(grid.get("dataset", []))
        for ref in (one for d in datasets for one in d.with_options(st.data).refs()):
            opts = {k: (0 if k == "subset_seed" and v == "replicate" else v)
                    for k, v in ref.options if k in DATA_OPTIONS}
            try:
                check_data_options(opts)
            except UserError as err:
                raise err.under(f"profiles.{profile}.data", file=c.file) from None


def _stage(c: Checker, name: str, sval: dict, key: str, run: dict) -> StageDecl:
    refs = c.mapping(sval.get("refs"), f"{key}.refs")
    for rname, rstage in refs.items():
        if not isinstance(rstage, str):
            c.fail(f"{key}.refs.{rname}", "a ref names an upstream stage", "e.g. `teacher: A`")
    from_stage = sval.get("from")
    if from_stage is not None and not isinstance(from_stage, str):
        c.fail(f"{key}.from", "`from:` names one upstream stage", "e.g. `from: A`")
    stage_eval = sval.get("evaluate")
    return StageDecl(
        name=name,
        dataset=c.data_ref(sval["dataset"], f"{key}.dataset") if "dataset" in sval else None,
        architecture=(c.plugin_ref(sval["architecture"], f"{key}.architecture", "architecture")
                      if "architecture" in sval else None),
        method=c.plugin_ref(sval["method"], f"{key}.method", "method") if "method" in sval else None,
        from_stage=from_stage, refs={str(k): v for k, v in refs.items()},
        evaluate=c.ref_list(stage_eval, f"{key}.evaluate", "evaluator") if stage_eval is not None else None,
        run=run)


def _check_axes(c: Checker, stages: dict[str, StageDecl], grid: dict, p: str) -> None:
    """Every stage gets each of dataset, architecture and method from somewhere, and every
    grid axis is taken by some stage."""
    for st in stages.values():
        for axis in AXES:
            if axis == "architecture" and own_architecture(stages, st.name) is not None:
                continue
            if getattr(st, axis) is None and axis not in grid:
                c.fail(f"{p}stages.{st.name}", f"stage {st.name!r} has no {axis}",
                       f"name one in the stage (`{axis}: ...`) or add grid.{axis}")
    for axis in grid:
        if axis == "architecture":
            unused = all(own_architecture(stages, st.name) is not None for st in stages.values())
        else:
            unused = all(getattr(st, axis) is not None for st in stages.values())
        if unused:
            c.fail(f"{p}grid.{axis}", f"grid.{axis} is not used: every stage names its own {axis}",
                   f"remove grid.{axis}, or leave `{axis}:` out of a stage")


def _check_dag(c: Checker, stages: dict[str, StageDecl], p: str) -> None:
    for st in stages.values():
        for up, where in ([(st.from_stage, "from")] if st.from_stage else []) + \
                [(s, f"refs.{r}") for r, s in st.refs.items()]:
            if up not in stages:
                c.fail(f"{p}stages.{st.name}.{where}", f"no stage {up!r}",
                       suggest(str(up), [s for s in stages if s != st.name]))
            if up == st.name:
                c.fail(f"{p}stages.{st.name}.{where}", "a stage cannot start from itself",
                       "name an earlier stage, or leave it out to train from scratch")
    try:
        graphlib.TopologicalSorter({n: st.upstream() for n, st in stages.items()}).prepare()
    except graphlib.CycleError as err:
        cycle = list(reversed(err.args[1]))  # graphlib lists it downstream first
        c.fail(f"{p}stages.{cycle[0]}", "the stages form a cycle: " + " -> ".join(cycle),
               "`from:` and `refs:` must point to earlier stages")
