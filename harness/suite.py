"""YAML suites: loading, validation into typed objects, profiles, grid expansion and the stage DAG.

A suite declares *settings* (one, or several under ``settings:``), each with a grid of methods x
datasets x architectures, a number of seeds and a DAG of stages. Expansion turns that into
``StageRun``s. A stage depends on a grid axis when it takes that axis's value (it does not name
its own dataset, architecture or method) or when a stage upstream of it does; stage runs that
do not depend on an axis are shared across its values instead of re-run (the from-scratch Std_B
baseline runs once per seed, not once per method).

Every error names the file, the key path and a hint; nothing here imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data_options import check_data_options, split_data_options
from .errors import UserError, suggest
from .report_spec import ReportSpec, parse_report

AXES = ("method", "dataset", "architecture")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine")

#: run settings: what ``defaults:``, a stage and a profile may set, with their defaults
RUN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": {"name": "constant"},
    "batch_size": 64,
    "epochs": 10,
    "device": "auto",
    "threads": "auto",
    "eval_batch_size": 1024,
    "download": False,
    "amp": "auto",
    "grad_clip": 0,
}
STAGE_KEYS = ("dataset", "architecture", "method", "from", "refs", "evaluate", *RUN_DEFAULTS)
SETTING_KEYS = ("description", "defaults", "grid", "seeds", "stages", "evaluate", "claims",
                "reference", "report")
SUITE_KEYS = ("suite", *SETTING_KEYS, "settings", "profiles")
PROFILE_KEYS = ("seeds", "stages", "settings", "evaluate", "defaults", *RUN_DEFAULTS)


# ------------------------------------------------------------------------------------------------
# Typed suite
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginRef:
    """A plugin name with its options and the label tables and run names use."""

    name: str
    label: str
    options: tuple[tuple[str, Any], ...] = ()
    key: str = ""  # where it was declared, for error messages

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.opts}


@dataclass(frozen=True)
class DataRef:
    """A stage's data: one data set, or several by role (``{source: digits, target: mnist5k}``).

    One data set keeps the spec it always had, so the identities of existing stage runs do not
    move; several are ``{"roles": {role: spec}}``. ``subset_seed: replicate`` in a data set's
    options is resolved per replicate (``for_replicate``), so each replicate draws its own
    labelled subset.
    """

    roles: tuple[tuple[str, PluginRef], ...]
    label: str
    key: str = ""
    multi: bool = False

    @classmethod
    def single(cls, ref: PluginRef) -> "DataRef":
        return cls((("target", ref),), ref.label, ref.key, False)

    @property
    def name(self) -> str:
        return "+".join(ref.name for _, ref in self.roles)

    def refs(self) -> list[PluginRef]:
        return [ref for _, ref in self.roles]

    def spec(self) -> dict[str, Any]:
        if not self.multi:
            return self.roles[0][1].spec()
        return {"roles": {role: ref.spec() for role, ref in self.roles}}

    def for_replicate(self, replicate: int) -> "DataRef":
        def resolve(ref: PluginRef) -> PluginRef:
            if ref.opts.get("subset_seed") != "replicate":
                return ref
            options = tuple((k, replicate if k == "subset_seed" else v) for k, v in ref.options)
            return PluginRef(ref.name, ref.label, options, ref.key)
        return DataRef(tuple((r, resolve(ref)) for r, ref in self.roles), self.label, self.key,
                       self.multi)


@dataclass
class StageDecl:
    name: str
    dataset: DataRef | None
    architecture: PluginRef | None
    method: PluginRef | None
    from_stage: str | None
    refs: dict[str, str]
    evaluate: list[PluginRef] | None
    run: dict[str, Any]

    def upstream(self) -> list[str]:
        return ([self.from_stage] if self.from_stage else []) + list(self.refs.values())


@dataclass
class Setting:
    name: str
    description: str
    defaults: dict[str, Any]
    grid: dict[str, list[PluginRef]]
    seeds: list[int]
    stages: dict[str, StageDecl]
    evaluate: list[PluginRef]
    claims: list[str]
    reference: dict[str, Any]
    #: what the report shows beyond test accuracy
    report: ReportSpec = field(default_factory=ReportSpec)


@dataclass
class Suite:
    name: str
    path: str
    description: str
    profile: str | None
    settings: list[Setting]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass
class StageRun:
    """One training run to execute: a stage of a cell for one replicate, fully resolved."""

    key: tuple
    suite: str
    setting: str
    stage: str
    replicate: int
    seed: int
    cell: dict[str, str]  # axis -> label, only the axes this stage depends on
    row: str  # the method label tables file this run under (the grid's method, if it depends on it)
    dataset: DataRef
    architecture: PluginRef
    method: PluginRef
    run: dict[str, Any]
    evaluate: list[PluginRef]
    from_key: tuple | None
    refs: dict[str, tuple]
    name: str

    def upstream_keys(self) -> list[tuple]:
        return ([self.from_key] if self.from_key else []) + list(self.refs.values())

    def config(self) -> dict[str, Any]:
        """The resolved configuration: what defines this run (apart from upstream and data)."""
        return {
            "suite": self.suite, "setting": self.setting, "stage": self.stage,
            "replicate": self.replicate, "seed": self.seed, "cell": dict(self.cell), "row": self.row,
            "dataset": self.dataset.spec(), "architecture": self.architecture.spec(),
            "method": {**self.method.spec(), "label": self.method.label},
            "run": dict(self.run), "evaluate": [e.spec() for e in self.evaluate],
        }


# ------------------------------------------------------------------------------------------------
# Loading and validation
# ------------------------------------------------------------------------------------------------
class _Checker:
    """Raises UserErrors that carry the suite's file name and a dotted key path."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, message: str, hint: str | None = None):
        raise UserError(message, file=self.file, key=key or None, hint=hint)

    def mapping(self, value, key) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {type(value).__name__}",
                      "write `key: value` lines indented under it")
        return value

    def known_keys(self, value: dict, key: str, allowed) -> None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                self.fail(where, f"unknown key {k!r}", suggest(str(k), allowed))

    def plugin_ref(self, value, key: str, axis: str) -> PluginRef:
        if isinstance(value, str):
            return PluginRef(value, value, (), key)
        if isinstance(value, dict):
            if "name" not in value or not isinstance(value["name"], str):
                self.fail(key, f"a {axis} entry needs a `name:`",
                          "write `- {name: std}` or just `- std`")
            options = {k: v for k, v in value.items() if k not in ("name", "label")}
            label = value.get("label")
            if label is None:
                label = value["name"] + "".join(f"-{k}{_short(v)}" for k, v in options.items())
            if not isinstance(label, str) or not label:
                self.fail(f"{key}.label", "a label must be a non-empty string", "e.g. `label: RR6`")
            return PluginRef(value["name"], label, tuple(sorted(options.items())), key)
        self.fail(key, f"a {axis} is a name or a mapping with `name:`, got "
                       f"{type(value).__name__}", "e.g. `std` or `{name: racecar, layers: 6}`")

    def data_ref(self, value, key: str) -> DataRef:
        """A data set (a name or `{name: ...}`), or a mapping of roles to data sets."""
        if not (isinstance(value, dict) and "name" not in value):
            return DataRef.single(self.plugin_ref(value, key, "dataset"))
        roles = {k: v for k, v in value.items() if k != "label"}
        if not roles:
            self.fail(key, "a dataset is a name, `{name: ...}`, or roles of data sets",
                      "e.g. `mnist5k` or `{source: digits, target: mnist5k}`")
        refs = []
        for role, v in roles.items():
            if not isinstance(role, str) or not role.isidentifier():
                self.fail(f"{key}.{role}", f"a data role is a plain name, got {role!r}",
                          "e.g. `source`, `target`, `A`")
            refs.append((role, self.plugin_ref(v, f"{key}.{role}", "dataset")))
        label = value.get("label", "+".join(ref.label for _, ref in refs))
        if not isinstance(label, str) or not label:
            self.fail(f"{key}.label", "a label must be a non-empty string", "e.g. `label: d2m`")
        return DataRef(tuple(refs), label, key, True)

    def ref_list(self, value, key: str, axis: str) -> list[PluginRef]:
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list):
            self.fail(key, f"expected a list of {axis}s", f"e.g. `[a, b]`, or one {axis} name")
        make = ((lambda v, k: self.data_ref(v, k)) if axis == "dataset"
                else (lambda v, k: self.plugin_ref(v, k, axis)))
        refs = [make(v, f"{key}[{i}]") for i, v in enumerate(value)]
        labels = [r.label for r in refs]
        for i, label in enumerate(labels):
            if labels.index(label) != i:
                self.fail(f"{key}[{i}]", f"label {label!r} is used twice",
                          "give each entry its own `label:`")
        return refs

    def run_settings(self, value: dict, key: str) -> dict:
        out = {}
        for k, v in value.items():
            where = f"{key}.{k}" if key else k
            if k not in RUN_DEFAULTS:
                self.fail(where, f"unknown key {k!r}", suggest(k, RUN_DEFAULTS))
            out[k] = self.run_value(k, v, where)
        return out

    def run_value(self, k: str, v, where: str):
        if k == "epochs":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                self.fail(where, f"epochs must be a positive integer, got {v!r}", "e.g. `epochs: 10`")
        elif k in ("batch_size", "eval_batch_size"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                self.fail(where, f"{k} must be a positive integer, got {v!r}", f"e.g. `{k}: 64`")
        elif k in ("lr", "momentum", "weight_decay"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "lr" and v == 0):
                self.fail(where, f"{k} must be a {'positive' if k == 'lr' else 'non-negative'} "
                                 f"number, got {v!r}",
                          "YAML reads 1e-3 as a string: write 1.0e-3" if isinstance(v, str) else None)
            v = float(v)
        elif k == "optimizer":
            if v not in OPTIMIZERS:
                self.fail(where, f"unknown optimizer {v!r}", suggest(str(v), OPTIMIZERS))
        elif k == "schedule":
            v = self.schedule(v, where)
        elif k == "threads":
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                self.fail(where, f"threads must be `auto` or a positive integer, got {v!r}",
                          "`auto` picks one thread for small networks, all given cores for large ones")
        elif k == "device":
            if not isinstance(v, str) or not (v in ("auto", "cpu", "cuda") or v.startswith("cuda:")):
                self.fail(where, f"device must be auto, cpu, cuda or cuda:N, got {v!r}",
                          "`auto` takes CUDA when there is one")
        elif k == "amp":
            if v not in ("auto", True, False):
                self.fail(where, f"amp must be auto, true or false, got {v!r}",
                          "`auto` uses bfloat16 autocast on CUDA for networks large enough to gain")
        elif k == "grad_clip":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                self.fail(where, f"grad_clip is the largest gradient norm, a non-negative number; "
                                 f"got {v!r}", "e.g. `grad_clip: 5.0`; 0 turns clipping off")
            v = float(v)
        elif k == "download":
            if not isinstance(v, bool):
                self.fail(where, f"download must be true or false, got {v!r}", "or use `harness run --download`")
        return v

    def schedule(self, v, where: str) -> dict:
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v:
            self.fail(where, "a schedule is a name or a mapping with `name:`",
                      "e.g. `cosine` or `{name: multistep, milestones: [80, 120], gamma: 0.1}`")
        name = v["name"]
        if name not in SCHEDULES:
            self.fail(f"{where}.name", f"unknown schedule {name!r}", suggest(str(name), SCHEDULES))
        allowed = {"constant": (), "step": ("step_size", "gamma"),
                   "multistep": ("milestones", "gamma"), "cosine": ("min_lr",)}[name]
        self.known_keys({k: x for k, x in v.items() if k != "name"}, where, allowed)
        if name == "step" and not (isinstance(v.get("step_size"), int) and v["step_size"] > 0):
            self.fail(f"{where}.step_size", "a step schedule needs a positive integer step_size",
                      "e.g. `{name: step, step_size: 30, gamma: 0.1}`")
        if name == "multistep":
            ms = v.get("milestones")
            if not (isinstance(ms, list) and ms and all(isinstance(m, int) and m > 0 for m in ms)):
                self.fail(f"{where}.milestones", "a multistep schedule needs a list of positive "
                                                 "epoch numbers", "e.g. `milestones: [80, 120]`")
        return dict(v)

    def seeds(self, value, key: str) -> list[int]:
        if isinstance(value, bool):
            self.fail(key, "seeds is a count or a list of integers", "e.g. `seeds: 5` or `seeds: [0, 1, 2]`")
        if isinstance(value, int):
            if value < 1:
                self.fail(key, f"seeds must be at least 1, got {value}", "e.g. `seeds: 5`")
            return list(range(value))
        if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool)
                                                     for s in value):
            if len(set(value)) != len(value):
                self.fail(key, "seeds are listed twice", "each replicate number once, e.g. `seeds: [0, 1, 2]`")
            return list(value)
        self.fail(key, f"seeds is a count or a non-empty list of integers, got {value!r}",
                  "e.g. `seeds: 5` or `seeds: [0, 1, 2]`")


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "_".join(_short(x) for x in v)
    return str(v)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class SuiteLoader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's booleans: only true and false.

    YAML 1.1 also reads on/off/yes/no as booleans, so an evaluator's ``on: [target, source]``
    would arrive as the key True, and a data set named ``no`` as False."""


SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError("no such suite file", file=str(path),
                        hint="give the path of a YAML suite, e.g. suites/quickstart.yaml")
    try:
        data = yaml.load(path.read_text(), Loader=SuiteLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"is not valid YAML: {problem}", file=str(path), key=where,
                        hint="check indentation and quoting there") from None
    if not isinstance(data, dict):
        raise UserError("a suite is a YAML mapping with at least `suite:` and `grid:` or `stages:`",
                        file=str(path), hint="start the file with `suite: NAME` at the left margin")
    return data


def load_suite(path: str | Path, profile: str | None = None) -> Suite:
    """Load, apply the profile (``default`` when there is one and none is named) and validate."""
    raw = read_yaml(path)
    return parse_suite(raw, str(path), profile)


def parse_suite(raw: dict, file: str, profile: str | None = None) -> Suite:
    c = _Checker(file)
    c.known_keys(raw, "", SUITE_KEYS)
    name = raw.get("suite")
    if not isinstance(name, str) or not name.strip():
        c.fail("suite", "every suite needs a name: `suite: <name>`", "e.g. `suite: transfer` on the first line")
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

    base = {k: v for k, v in raw.items() if k in SETTING_KEYS}
    settings_raw = c.mapping(raw.get("settings"), "settings")
    if not settings_raw:
        settings_raw = {name: {}}
    settings = []
    for sname, sval in settings_raw.items():
        sval = c.mapping(sval, f"settings.{sname}")
        c.known_keys(sval, f"settings.{sname}", SETTING_KEYS)
        merged = _deep_merge(base, sval)
        # stages of a setting replace the suite's, they are not merged stage by stage
        if "stages" in sval:
            merged["stages"] = sval["stages"]
        prefix = f"settings.{sname}." if raw.get("settings") else ""
        settings.append(_parse_setting(c, str(sname), merged, prefix, chosen, profile))
    return Suite(name=name, path=file, description=str(raw.get("description", "")),
                 profile=profile, settings=settings, raw=raw)


def _check_profile(c: _Checker, prof: dict, key: str) -> None:
    c.known_keys(prof, key, PROFILE_KEYS)
    c.run_settings({k: v for k, v in prof.items() if k in RUN_DEFAULTS}, key)
    if "defaults" in prof:
        c.run_settings(c.mapping(prof["defaults"], f"{key}.defaults"), f"{key}.defaults")
    if "seeds" in prof:
        c.seeds(prof["seeds"], f"{key}.seeds")
    for sname, sval in c.mapping(prof.get("stages"), f"{key}.stages").items():
        c.run_settings(c.mapping(sval, f"{key}.stages.{sname}"), f"{key}.stages.{sname}")
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


def _parse_setting(c: _Checker, sname: str, raw: dict, prefix: str, prof: dict,
                   profile: str | None) -> Setting:
    p = prefix
    layers = _profile_layers(prof, sname)
    defaults = dict(RUN_DEFAULTS)
    defaults.update(c.run_settings(c.mapping(raw.get("defaults"), f"{p}defaults"), f"{p}defaults"))
    profile_run: dict = {}
    for layer in layers:
        profile_run.update({k: v for k, v in layer.items() if k in RUN_DEFAULTS})
        profile_run.update(layer.get("defaults") or {})
    profile_run = c.run_settings(profile_run, f"profiles.{profile}")

    grid_raw = c.mapping(raw.get("grid"), f"{p}grid")
    c.known_keys(grid_raw, f"{p}grid", AXES)
    grid = {axis: c.ref_list(v, f"{p}grid.{axis}", axis) for axis, v in grid_raw.items()}
    for axis, refs in grid.items():
        if not refs:
            c.fail(f"{p}grid.{axis}", f"grid.{axis} is empty", f"list at least one {axis}")

    seeds_value = raw.get("seeds", 1)
    for layer in layers:
        seeds_value = layer.get("seeds", seeds_value)
    seeds = c.seeds(seeds_value, f"{p}seeds")

    evaluate_raw = raw.get("evaluate", ["accuracy"])
    for layer in layers:
        evaluate_raw = layer.get("evaluate", evaluate_raw)
    evaluate = c.ref_list(evaluate_raw, f"{p}evaluate", "evaluator")

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
        sval = c.mapping(sval, key)
        c.known_keys(sval, key, STAGE_KEYS)
        run = dict(defaults)
        run.update(c.run_settings({k: v for k, v in sval.items() if k in RUN_DEFAULTS}, key))
        run.update(profile_run)
        for layer in layers:
            run.update(c.run_settings(((layer.get("stages") or {}).get(stname) or {}),
                                      f"profiles.{profile}.stages.{stname}"))
        refs = c.mapping(sval.get("refs"), f"{key}.refs")
        for rname, rstage in refs.items():
            if not isinstance(rstage, str):
                c.fail(f"{key}.refs.{rname}", "a ref names an upstream stage", "e.g. `teacher: A`")
        from_stage = sval.get("from")
        if from_stage is not None and not isinstance(from_stage, str):
            c.fail(f"{key}.from", "`from:` names one upstream stage", "e.g. `from: A`")
        stage_eval = sval.get("evaluate")
        stages[str(stname)] = StageDecl(
            name=str(stname),
            dataset=c.data_ref(sval["dataset"], f"{key}.dataset") if "dataset" in sval else None,
            architecture=(c.plugin_ref(sval["architecture"], f"{key}.architecture", "architecture")
                          if "architecture" in sval else None),
            method=c.plugin_ref(sval["method"], f"{key}.method", "method") if "method" in sval else None,
            from_stage=from_stage, refs={str(k): v for k, v in refs.items()},
            evaluate=c.ref_list(stage_eval, f"{key}.evaluate", "evaluator") if stage_eval is not None else None,
            run=run)

    for layer in layers:
        for stname in (layer.get("stages") or {}):
            if stname not in stages:
                c.fail(f"profiles.{profile}.stages.{stname}", f"no stage {stname!r} in setting {sname!r}",
                       suggest(str(stname), stages))
    _check_dag(c, stages, p)
    # every stage must get each of dataset/architecture/method from somewhere
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
    claims = raw.get("claims") or []
    if not isinstance(claims, list) or not all(isinstance(x, str) for x in claims):
        c.fail(f"{p}claims", "claims are a list of strings", 'e.g. `- "AB.RR6 > AB.std"`')
    setting = Setting(name=sname, description=str(raw.get("description", "")), defaults=defaults,
                      grid=grid, seeds=seeds, stages=stages, evaluate=evaluate, claims=claims,
                      reference=c.mapping(raw.get("reference"), f"{p}reference"))
    from .claims import check_setting, stage_rows  # these name stages and rows: check them now
    check_setting(setting, file=c.file, prefix=p)
    setting.report = parse_report(raw.get("report"), stage_rows(setting), file=c.file, prefix=p)
    return setting


def _check_dag(c: _Checker, stages: dict[str, StageDecl], p: str) -> None:
    for st in stages.values():
        for up, where in ([(st.from_stage, "from")] if st.from_stage else []) + \
                [(s, f"refs.{r}") for r, s in st.refs.items()]:
            if up not in stages:
                c.fail(f"{p}stages.{st.name}.{where}", f"no stage {up!r}",
                       suggest(str(up), [s for s in stages if s != st.name]))
            if up == st.name:
                c.fail(f"{p}stages.{st.name}.{where}", "a stage cannot start from itself",
                       "name an earlier stage, or leave it out to train from scratch")
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]):
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            c.fail(f"{p}stages.{name}", "the stages form a cycle: " + " -> ".join(cycle),
                   "`from:` and `refs:` must point to earlier stages")
        state[name] = 1
        for up in stages[name].upstream():
            visit(up, path + [name])
        state[name] = 2

    for name in stages:
        visit(name, [])


# ------------------------------------------------------------------------------------------------
# Expansion
# ------------------------------------------------------------------------------------------------
def topological(stages: dict[str, StageDecl]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        for up in stages[name].upstream():
            visit(up)
        order.append(name)

    for name in stages:
        visit(name)
    return order


def own_architecture(stages: dict[str, StageDecl], name: str) -> PluginRef | None:
    """The architecture a stage names, or inherits from its ``from:`` stage (whose weights it
    starts from, so it must be the same network); None when it takes the grid's."""
    st = stages[name]
    if st.architecture is not None:
        return st.architecture
    if st.from_stage is not None:
        return own_architecture(stages, st.from_stage)
    return None


def stage_axes(stages: dict[str, StageDecl], grid: dict) -> dict[str, tuple[str, ...]]:
    """Which grid axes each stage's runs vary with: its own, plus every upstream stage's."""
    deps: dict[str, tuple[str, ...]] = {}
    for name in topological(stages):
        st = stages[name]
        own = {axis for axis in AXES if getattr(st, axis) is None and axis in grid
               and not (axis == "architecture" and st.from_stage)}
        for up in st.upstream():
            own |= set(deps[up])
        deps[name] = tuple(a for a in AXES if a in own)
    return deps


def derive_seed(*parts) -> int:
    """A 31-bit seed from names, stable across machines and Python versions (unlike hash())."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def expand(suite: Suite) -> list[StageRun]:
    """All stage runs of all settings, upstream before downstream, shared runs once."""
    runs: dict[tuple, StageRun] = {}
    multi_setting = len(suite.settings) > 1
    for setting in suite.settings:
        deps = stage_axes(setting.stages, setting.grid)
        order = topological(setting.stages)
        axes = [a for a in AXES if a in setting.grid]
        for values in itertools.product(*(setting.grid[a] for a in axes)):
            cell = dict(zip(axes, values))
            for replicate in setting.seeds:
                for stname in order:
                    st = setting.stages[stname]
                    key = _key(setting.name, stname, deps[stname], cell, replicate)
                    if key in runs:
                        continue
                    labels = {a: cell[a].label for a in deps[stname]}
                    dataset = (st.dataset or cell["dataset"]).for_replicate(replicate)
                    architecture = own_architecture(setting.stages, stname) or cell["architecture"]
                    method = st.method or cell["method"]
                    # the row a run belongs to: the grid's method, or the method of the stage it
                    # starts from (AB of RR6 is an RR6 result even though AB trains with std)
                    from_key = (_key(setting.name, st.from_stage, deps[st.from_stage], cell,
                                     replicate) if st.from_stage else None)
                    if "method" in labels:
                        row = labels["method"]
                    elif from_key is not None:
                        row = runs[from_key].row
                    else:
                        row = method.label
                    name_parts = [stname, row]
                    for a in ("dataset", "architecture"):
                        if a in deps[stname] and len(setting.grid.get(a, [])) > 1:
                            name_parts.append(labels[a])
                    name_parts.append(f"seed{replicate}")
                    name = "/".join(name_parts)
                    if multi_setting:
                        name = f"{setting.name}:{name}"
                    runs[key] = StageRun(
                        key=key, suite=suite.name, setting=setting.name, stage=stname,
                        replicate=replicate,
                        seed=derive_seed(suite.name, setting.name, stname,
                                         sorted(labels.items()), replicate),
                        cell=labels, row=row, dataset=dataset, architecture=architecture, method=method,
                        run=dict(st.run),
                        evaluate=st.evaluate if st.evaluate is not None else setting.evaluate,
                        from_key=from_key,
                        refs={r: _key(setting.name, s, deps[s], cell, replicate)
                              for r, s in st.refs.items()},
                        name=name)
    return list(runs.values())


def _key(setting: str, stage: str, axes: tuple[str, ...], cell: dict, replicate: int) -> tuple:
    return (setting, stage, tuple((a, cell[a].label) for a in axes), replicate)


def check_plugins(suite: Suite, plugins) -> None:
    """Every name in the suite is registered and every option is accepted by its plugin."""
    from .plugins import check_options

    kinds = {"dataset": ("datasets", 1), "architecture": ("architectures", 2),
             "method": ("methods", 2), "evaluator": ("evaluators", 0)}

    def check(ref: PluginRef, kind: str):
        registry, skip = kinds[kind]
        options = ref.opts
        if kind == "evaluator":  # `every` and `on` belong to the core's scheduling
            on = options.pop("on", [])
            if not (isinstance(on, str) or (isinstance(on, list)
                                            and all(isinstance(r, str) for r in on))):
                raise UserError(f"on names data roles to measure, got {on!r}", file=suite.path,
                                key=f"{ref.key}.on", hint="e.g. `{name: accuracy, on: [target, source]}`")
            every = options.pop("every", 1)
            if every != "end" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
                raise UserError(f"every must be a positive epoch interval or `end`, got {every!r}",
                                file=suite.path, key=f"{ref.key}.every",
                                hint="e.g. `{name: accuracy, every: 5}`")
        if kind == "dataset":  # the core's data options, which every data set has
            options, data_options = split_data_options(options)
        try:
            entry = plugins.get(registry, ref.name)
            check_options(entry, options, skip=skip)
            if kind == "dataset":
                check_data_options({k: (0 if k == "subset_seed" and v == "replicate" else v)
                                    for k, v in data_options.items()})
        except UserError as err:
            key = ref.key if err.key is None or err.key == ref.name else f"{ref.key}.{err.key}"
            raise UserError(err.message, file=suite.path, key=key, hint=err.hint) from None

    def check_axis(ref, axis: str):
        for one in (ref.refs() if axis == "dataset" else [ref]):
            check(one, axis)

    for setting in suite.settings:
        for axis, refs in setting.grid.items():
            for ref in refs:
                check_axis(ref, axis)
        for ref in setting.evaluate:
            check(ref, "evaluator")
        for st in setting.stages.values():
            for axis in AXES:
                if getattr(st, axis) is not None:
                    check_axis(getattr(st, axis), axis)
            for ref in st.evaluate or []:
                check(ref, "evaluator")
