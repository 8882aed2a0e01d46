"""The typed suite: what loading a YAML suite gives (``Suite``, its ``Setting``s and their
``StageDecl``s) and what expanding it gives (``StageRun``s, one training run each).

A ``StageRun``'s ``config()`` is the resolved configuration its identity is a hash of, so its
keys and their order of construction are kept exactly as they were: a change here is a change
of every identity in every store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .report_spec import ReportSpec


@dataclass(frozen=True)
class PluginRef:
    """A plugin name with its options and the label tables and run names use."""

    name: str
    label: str
    options: tuple[tuple[str, Any], ...] = ()
    key: str = ""  # where it was declared, for error messages
    #: whether the suite gave the label (`label: EWC`) rather than the name and options making it
    labelled: bool = field(default=False, compare=False)

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

    def with_options(self, options: dict[str, Any]) -> "DataRef":
        """Every role's data set with ``options`` (a profile's data options) over its own; a
        profile's ``labels`` replaces a ``labels_per_class`` and the other way round. Labels
        and keys stay, so tables and errors name the data as the suite does."""
        if not options:
            return self
        exclusive = {"labels": "labels_per_class", "labels_per_class": "labels"}
        dropped = {exclusive[k] for k in options if k in exclusive}

        def merge(ref: PluginRef) -> PluginRef:
            opts = {k: v for k, v in ref.options if k not in dropped} | dict(options)
            return PluginRef(ref.name, ref.label, tuple(sorted(opts.items())), ref.key)
        return DataRef(tuple((r, merge(ref)) for r, ref in self.roles), self.label, self.key,
                       self.multi)

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
    #: data options a profile sets on every data set of the stage (``profiles.P.data``)
    data: dict[str, Any] = field(default_factory=dict)

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
    #: (stage, row label) -> why its runs are expected to fail (``expectations``)
    expect_failure: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    path: str
    description: str
    profile: str | None
    settings: list[Setting]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    #: the plugins' defaults it was read with (``defaults.Lazy``), to read it again the same way
    defaults: Any = field(repr=False, default=None, compare=False)

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
    #: why the suite expects this run to fail ("" when it does not): not part of the identity
    expected_failure: str = ""

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

