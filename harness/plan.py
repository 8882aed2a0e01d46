"""Planning a suite: its stage runs, the data each reads (built once per distinct spec), and
each run's identity, computed upstream first; then the preflight (``harness.preflight``).

An identity is a hash of the run's resolved config, its upstream identities, the plugin
versions, the data fingerprint and the plugins' code digests (``harness.codeid``); ``bases``
are the identities without the digests, by which ``harness plan`` tells stale runs. A stage run
whose identity finished in the store is skipped, so what goes into an identity, and how, must
not change.

``harness run``, ``plan``, ``validate`` and ``report`` all read a suite through ``make_plan``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .codeid import run_code
from .datasets import check_roles
from .engine import ResumeState
from .errors import UserError
from .preflight import preflight
from .suite import StageRun, Suite, check_plugins, expand
from .tracking import FinishedRun, flatten, identity
from .train.build import StageData, build_stage_data


def run_params(run: StageRun) -> dict[str, str]:
    """The MLflow params of a stage run (``method.*``, ``run.*``, ``dataset.*``, ...)."""
    params = flatten("", {k: v for k, v in run.config().items()
                          if k in ("dataset", "architecture", "method", "run", "seed", "replicate")}, {})
    params["evaluate"] = json.dumps([e.spec() for e in run.evaluate])
    return params


def resume_dir(home: Path, ident: str) -> Path:
    """Where a stage run keeps the state ``--resume`` continues from."""
    return home / "resume" / ident


def resume_progress(home: Path, ident: str) -> dict | None:
    """``{"epoch": k, "epochs": n}`` when an interrupted stage run saved its state, else None."""
    folder = resume_dir(home, ident)
    return ResumeState.progress(folder) if (folder / ResumeState.FILE).is_file() else None


def data_key(run: StageRun) -> str:
    """What a stage run's data is built from: runs with the same key share the tensors."""
    return json.dumps({"spec": run.dataset.spec(), "download": bool(run.run.get("download"))},
                      sort_keys=True, default=str)


@dataclass
class Plan:
    suite: Suite
    runs: list[StageRun]
    identities: dict[tuple, str]
    fingerprints: dict[tuple, str]
    data: dict[str, StageData] = field(default_factory=dict)
    code: dict[tuple, dict[str, str]] = field(default_factory=dict)
    bases: dict[tuple, str] = field(default_factory=dict)

    def todo(self, finished: dict[str, FinishedRun], *, force: bool = False,
             selected: set[tuple] | None = None) -> list[StageRun]:
        """What a run executes: the ``selected`` runs (``--only``; all by default) that have not
        finished, or all of them with ``force`` (new runs; the finished ones stay recorded)."""
        runs = [r for r in self.runs if selected is None or r.key in selected]
        return runs if force else [r for r in runs if self.identities[r.key] not in finished]

    def stage_data(self, run: StageRun) -> StageData:
        return self.data[data_key(run)]


def make_plan(suite: Suite, plugins, data_root: Path) -> Plan:
    """Validate plugin names, build data once per distinct spec, compute identities."""
    check_plugins(suite, plugins)
    runs = expand(suite)
    data: dict[str, StageData] = {}
    fingerprints: dict[str, str] = {}
    identities: dict[tuple, str] = {}
    code: dict[tuple, dict[str, str]] = {}  # harness.codeid digests, part of the identity
    bases: dict[tuple, str] = {}  # the identity without code: how stale runs are recognised
    digests: dict = {}
    for run in runs:
        dkey = data_key(run)
        if dkey not in data:
            data[dkey] = _stage_data(suite, plugins, run, data_root)
            fingerprints[dkey] = data[dkey].fingerprint()
        _check_eval_roles(suite, run, data[dkey])
        upstream = {"from": identities[run.from_key]} if run.from_key else {}
        upstream.update({f"refs.{r}": identities[k] for r, k in run.refs.items()})
        versions = _versions(plugins, run)
        code[run.key] = run_code(plugins, run, digests)
        identities[run.key] = identity(run.config(), upstream, versions, fingerprints[dkey],
                                       code[run.key])
        base_up = {"from": bases[run.from_key]} if run.from_key else {}
        base_up.update({f"refs.{r}": bases[k] for r, k in run.refs.items()})
        bases[run.key] = identity(run.config(), base_up, versions, fingerprints[dkey])
    plan = Plan(suite=suite, runs=runs, identities=identities, code=code, bases=bases,
                fingerprints={r.key: fingerprints[data_key(r)] for r in runs}, data=data)
    preflight(suite, plugins, runs, plan.stage_data)
    return plan


def _eval_roles(run: StageRun) -> list[str]:
    """The data roles a stage run's evaluators measure besides the primary one (``on:``)."""
    roles: list[str] = []
    for ev in run.evaluate:
        on = ev.opts.get("on") or []
        roles += [on] if isinstance(on, str) else list(on)
    return roles


def _stage_data(suite: Suite, plugins, run: StageRun, data_root: Path) -> StageData:
    try:
        return build_stage_data(plugins, run.dataset.spec(), str(data_root),
                                bool(run.run.get("download")))
    except UserError as err:
        raise err.under(run.dataset.key, file=suite.path, own=("dataset",)) from None
    except Exception as exc:  # noqa: BLE001  options the factory could not use: bad input
        raise UserError(f"dataset {run.dataset.name!r} could not be built with these "
                        f"options: {type(exc).__name__}: {exc}", file=suite.path,
                        key=run.dataset.key, hint="check the option values") from None


def _check_eval_roles(suite: Suite, run: StageRun, data: StageData) -> None:
    for ev in run.evaluate:
        on = ev.opts.get("on") or []
        for role in [on] if isinstance(on, str) else on:
            if role not in data.roles:
                raise UserError(f"evaluator {ev.name!r} is asked to measure data role {role!r}, "
                                f"which stage {run.stage!r} does not have", file=suite.path,
                                key=f"{ev.key}.on", hint=f"its roles: {', '.join(data.roles)}")
    try:
        check_roles(data.roles, _eval_roles(run))
    except UserError as err:
        raise err.under(run.dataset.key, file=suite.path) from None


def _versions(plugins, run: StageRun) -> dict[str, str]:
    """The plugin versions in a stage run's identity (one data set: under ``datasets``, as
    always; several: ``datasets.<role>`` each)."""
    versions = {}
    if run.dataset.multi:
        for role, ref in run.dataset.roles:
            versions[f"datasets.{role}"] = plugins.get("datasets", ref.name).version
    else:
        versions["datasets"] = plugins.get("datasets", run.dataset.name).version
    versions["architectures"] = plugins.get("architectures", run.architecture.name).version
    versions["methods"] = plugins.get("methods", run.method.name).version
    for ev in run.evaluate:
        versions[f"evaluators.{ev.name}"] = plugins.get("evaluators", ev.name).version
    return versions

