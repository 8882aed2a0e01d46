"""The driver of ``harness run``: plan, skip what finished, dispatch, record.

It builds each distinct dataset once (its fingerprint is part of every identity, and the inline
executor reuses the tensors), computes identities upstream-first, asks MLflow which identities
already finished, and hands the rest to the executor. A parent MLflow run is created only when
there is something to run, so a repeated invocation leaves the store untouched.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .api import DataBundle, StageResult
from .engine import CHECKPOINT, ModelSource, StageTask, build_data, run_stage
from .errors import UserError
from .executors import Job
from .progress import Progress
from .suite import StageRun, Suite, check_plugins, expand
from .tracking import TAG, EpochBuffer, FinishedRun, Tracker, flatten, git_commit, identity, library_versions


@dataclass
class Plan:
    suite: Suite
    runs: list[StageRun]
    identities: dict[tuple, str]
    fingerprints: dict[tuple, str]
    data: dict[str, DataBundle] = field(default_factory=dict)

    def todo(self, finished: dict[str, FinishedRun]) -> list[StageRun]:
        return [r for r in self.runs if self.identities[r.key] not in finished]


@dataclass
class Outcome:
    finished: int = 0
    failed: int = 0
    skipped: int = 0
    already: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if (self.failed or self.skipped) else 0


def _data_key(spec: dict, download: bool) -> str:
    return json.dumps({"spec": spec, "download": download}, sort_keys=True, default=str)


def make_plan(suite: Suite, plugins, data_root: Path) -> Plan:
    """Validate plugin names, build data once per distinct spec, compute identities."""
    check_plugins(suite, plugins)
    runs = expand(suite)
    data: dict[str, DataBundle] = {}
    fingerprints: dict[str, str] = {}
    identities: dict[tuple, str] = {}
    for run in runs:
        spec = run.dataset.spec()
        dkey = _data_key(spec, bool(run.run.get("download")))
        if dkey not in data:
            try:
                data[dkey] = build_data(plugins, spec, str(data_root), bool(run.run.get("download")))
            except UserError as err:
                key = (run.dataset.key if err.key in (None, "dataset")
                       else f"{run.dataset.key}.{err.key}")
                raise UserError(err.message, file=suite.path, key=key, hint=err.hint) from None
            fingerprints[dkey] = data[dkey].fingerprint()
        versions = {kind: plugins.get(kind, ref.name).version for kind, ref in
                    (("datasets", run.dataset), ("architectures", run.architecture),
                     ("methods", run.method))}
        for ev in run.evaluate:
            versions[f"evaluators.{ev.name}"] = plugins.get("evaluators", ev.name).version
        upstream = {"from": identities[run.from_key]} if run.from_key else {}
        upstream.update({f"refs.{r}": identities[k] for r, k in run.refs.items()})
        identities[run.key] = identity(run.config(), upstream, versions, fingerprints[dkey])
    return Plan(suite=suite, runs=runs, identities=identities,
                fingerprints={r.key: fingerprints[_data_key(r.dataset.spec(), bool(r.run.get("download")))]
                              for r in runs},
                data=data)


class Driver:
    """One invocation of ``harness run``: records every stage run it starts, whatever happens."""

    def __init__(self, plan: Plan, tracker: Tracker, plugins, *, home: Path, data_root: Path,
                 executor, progress: Progress, command: str, plugin_modules=(), cores: int | None = None):
        self.plan, self.tracker, self.plugins = plan, tracker, plugins
        self.home, self.data_root, self.executor = home, data_root, executor
        self.progress, self.command = progress, command
        self.plugin_modules = tuple(plugin_modules)
        if cores is None:
            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
        self.cores = cores
        self.by_key = {r.key: r for r in plan.runs}
        self.by_identity = {plan.identities[r.key]: r for r in plan.runs}
        self.finished_runs: dict[str, FinishedRun] = {}
        self.failed: dict[tuple, str] = {}
        self.child_ids: dict[tuple, str] = {}
        self.buffers: dict[tuple, EpochBuffer] = {}
        self.outcome = Outcome()
        self.versions = library_versions()
        self.commit = git_commit(Path(plan.suite.path).resolve())

    # -- the whole invocation -------------------------------------------------------------------
    def run(self) -> Outcome:
        self.finished_runs = self.tracker.finished()
        todo = self.plan.todo(self.finished_runs)
        self.outcome.already = len(self.plan.runs) - len(todo)
        if not todo:
            self.progress.say(f"all {len(self.plan.runs)} stage runs of suite "
                              f"{self.plan.suite.name!r} already finished; nothing to run")
            return self.outcome
        if self.outcome.already:
            self.progress.say(f"{self.outcome.already} of {len(self.plan.runs)} stage runs already "
                              f"finished; running the other {len(todo)}")
        self.tracker.start_parent(Path(self.plan.suite.path), self.plan.suite.profile, self.command,
                                  resolved=self.resolved())
        self.progress.start(len(todo))
        jobs = [Job(r.key, r.name, [k for k in r.upstream_keys()
                                    if self.plan.identities[k] not in self.finished_runs])
                for r in todo]
        status = "FINISHED"
        started = time.perf_counter()
        try:
            self.executor.run(jobs, self.prepare, self.execute_here, self.finish)
        except KeyboardInterrupt:
            status = "KILLED"
            for key, run_id in list(self.child_ids.items()):
                self.tracker.client.set_terminated(run_id, "KILLED")
            self.tracker.finish_parent("KILLED", {})
            raise
        finally:
            self.progress.stop()
        if self.outcome.failed or self.outcome.skipped:
            status = "FAILED"
        self.tracker.finish_parent(status, {
            "stage_runs_finished": self.outcome.finished, "stage_runs_failed": self.outcome.failed,
            "stage_runs_skipped": self.outcome.skipped, "stage_runs_already_finished": self.outcome.already,
            "wall_seconds": time.perf_counter() - started})
        return self.outcome

    def resolved(self) -> dict:
        return {"suite": self.plan.suite.name, "profile": self.plan.suite.profile,
                "runs": [{"name": r.name, "identity": self.plan.identities[r.key], **r.config()}
                         for r in self.plan.runs]}

    # -- executor callbacks (driver process) ----------------------------------------------------
    def source(self, key: tuple) -> ModelSource:
        run = self.by_key[key]
        done = self.finished_runs[self.plan.identities[key]]
        return ModelSource(self.tracker.artifact_path(done, CHECKPOINT),
                           {r: self.source(k) for r, k in run.refs.items()})

    def prepare(self, job: Job) -> StageTask | None:
        run = self.by_key[job.key]
        bad = [self.by_key[k].name for k in run.upstream_keys() if k in self.failed]
        ident = self.plan.identities[run.key]
        tags = self.tags(run)
        config = {**run.config(), "identity": ident,
                  "data_fingerprint": self.plan.fingerprints[run.key],
                  "upstream": {"from": self.plan.identities[run.from_key] if run.from_key else None,
                               **{f"refs.{r}": self.plan.identities[k] for r, k in run.refs.items()}}}
        params = flatten("", {k: v for k, v in run.config().items()
                              if k in ("dataset", "architecture", "method", "run", "seed", "replicate")}, {})
        params["evaluate"] = json.dumps([e.spec() for e in run.evaluate])
        if run.from_key:
            params["from"] = self.by_key[run.from_key].name
        if bad:
            reason = f"skipped: upstream stage run {', '.join(bad)} did not finish"
            run_id = self.tracker.start_child(run.name, {**tags, f"{TAG}skipped": reason}, params, config)
            self.tracker.client.set_terminated(run_id, "KILLED")
            self.failed[run.key] = reason
            self.outcome.skipped += 1
            self.progress.done(run.name, "SKIPPED", reason)
            return None
        run_id = self.tracker.start_child(run.name, tags, params, config)
        self.child_ids[run.key] = run_id
        self.buffers[run.key] = EpochBuffer(self.tracker, run_id)
        self.progress.begin(run.name, int(run.run["epochs"]))
        return StageTask(
            name=run.name, identity=ident, stage=run.stage, seed=run.seed,
            dataset=run.dataset.spec(), architecture=run.architecture.spec(),
            method=run.method.spec(), run=dict(run.run), evaluate=[e.spec() for e in run.evaluate],
            config=config, artifact_dir=str(self.home / "staging" / ident),
            data_root=str(self.data_root),
            init_from=self.source(run.from_key) if run.from_key else None,
            refs={r: self.source(k) for r, k in run.refs.items()},
            plugin_modules=self.plugin_modules,
            max_threads=self.executor.threads_per_job(self.cores))

    def execute_here(self, task: StageTask) -> StageResult:
        run = self.by_identity[task.identity]
        data = self.plan.data[_data_key(run.dataset.spec(), bool(run.run.get("download")))]
        buffer = self.buffers[run.key]

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            buffer.add(epoch, metrics)
            self.progress.epoch(epoch)

        return run_stage(task, self.plugins, data=data, on_epoch=on_epoch)

    def finish(self, job: Job, result: StageResult) -> None:
        run = self.by_key[job.key]
        run_id = self.child_ids.pop(run.key)
        buffer = self.buffers.pop(run.key)
        buffer.rows = result.history  # the same rows on_epoch saw, or all of them from a worker
        buffer.flush()
        tags = {}
        if result.error:
            tags[f"{TAG}error"] = result.error[:5000]
        self.tracker.finish_child(run_id, result.status, result.summary, result.params,
                                  result.artifact_dir, tags)
        if result.ok:
            self.outcome.finished += 1
            info = self.tracker.client.get_run(run_id).info
            self.finished_runs[self.plan.identities[run.key]] = FinishedRun(run_id, run.name,
                                                                             info.artifact_uri)
            acc = result.summary.get("test_acc")
            detail = f"test_acc={acc:.4f}" if acc is not None else ""
            self.progress.done(run.name, "FINISHED", f"{detail} {result.summary.get('train_seconds', 0):.1f}s")
        else:
            self.outcome.failed += 1
            self.failed[run.key] = result.error or "failed"
            self.outcome.messages.append(f"{run.name}: {result.error}")
            self.progress.done(run.name, "FAILED", result.error or "")

    def tags(self, run: StageRun) -> dict[str, str]:
        return {
            f"{TAG}suite": run.suite, f"{TAG}setting": run.setting, f"{TAG}stage": run.stage,
            f"{TAG}method": run.row, f"{TAG}stage_method": run.method.label,
            f"{TAG}method_name": run.method.name,
            f"{TAG}dataset": run.dataset.label, f"{TAG}architecture": run.architecture.label,
            f"{TAG}seed": str(run.seed), f"{TAG}replicate": str(run.replicate),
            f"{TAG}cell": json.dumps(run.cell, sort_keys=True),
            f"{TAG}identity": self.plan.identities[run.key],
            f"{TAG}data_fingerprint": self.plan.fingerprints[run.key],
            f"{TAG}profile": self.plan.suite.profile or "",
            f"{TAG}git_commit": self.commit,
            f"{TAG}versions": json.dumps(self.versions, sort_keys=True),
        }
