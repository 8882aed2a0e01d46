"""The driver of ``harness run``: plan, skip what finished, dispatch, record.

It builds each distinct dataset once (its fingerprint is part of every identity, and the inline
executor reuses the tensors), computes identities upstream-first, asks MLflow which identities
already finished, and hands the rest to the executor. A parent MLflow run is created only when
there is something to run, so a repeated invocation leaves the store untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .api import StageResult
from .datasets import check_roles
from .engine import CHECKPOINT, ModelSource, ResumeState, StageTask, resolve_device, run_stage
from .errors import UserError
from .executors import Job
from .progress import Progress
from .records import dataset_inputs, log_network
from .suite import StageRun, Suite, check_plugins, expand
from .train.build import StageData, build_method, build_model, build_stage_data
from .train.streams import resolve_streams
from .tracking import (TAG, EpochBuffer, FinishedRun, Tracker, flatten, git_commit, identity,
                       invocation_alive, library_versions)


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


@dataclass
class Plan:
    suite: Suite
    runs: list[StageRun]
    identities: dict[tuple, str]
    fingerprints: dict[tuple, str]
    data: dict[str, StageData] = field(default_factory=dict)

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
        key = (run.dataset.key if err.key in (None, "dataset")
               else f"{run.dataset.key}.{err.key}")
        raise UserError(err.message, file=suite.path, key=key, hint=err.hint) from None


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
        raise UserError(err.message, file=suite.path, key=f"{run.dataset.key}.{err.key}",
                        hint=err.hint) from None


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


def make_plan(suite: Suite, plugins, data_root: Path) -> Plan:
    """Validate plugin names, build data once per distinct spec, compute identities."""
    check_plugins(suite, plugins)
    runs = expand(suite)
    data: dict[str, StageData] = {}
    fingerprints: dict[str, str] = {}
    identities: dict[tuple, str] = {}
    for run in runs:
        dkey = _data_key(run.dataset.spec(), bool(run.run.get("download")))
        if dkey not in data:
            data[dkey] = _stage_data(suite, plugins, run, data_root)
            fingerprints[dkey] = data[dkey].fingerprint()
        _check_eval_roles(suite, run, data[dkey])
        upstream = {"from": identities[run.from_key]} if run.from_key else {}
        upstream.update({f"refs.{r}": identities[k] for r, k in run.refs.items()})
        identities[run.key] = identity(run.config(), upstream, _versions(plugins, run),
                                       fingerprints[dkey])
    preflight(suite, plugins, runs, data)
    return Plan(suite=suite, runs=runs, identities=identities,
                fingerprints={r.key: fingerprints[_data_key(r.dataset.spec(), bool(r.run.get("download")))]
                              for r in runs},
                data=data)


def _locate(suite: Suite, err: UserError, ref, own: tuple[str, ...]) -> UserError:
    key = ref.key if err.key in (None, *own) else f"{ref.key}.{err.key}"
    return UserError(err.message, file=suite.path, key=key, hint=err.hint)


def _build_untrained(suite: Suite, plugins, run: StageRun, stage_data: StageData, upstream):
    """The stage run's method, untrained on the CPU; None when it fails other than as bad input."""
    main = stage_data.main
    try:
        model = build_model(plugins, run.architecture.spec(), main.input_shape, main.num_classes)
    except UserError as err:
        raise _locate(suite, err, run.architecture, ("architecture",)) from None
    except Exception:  # noqa: BLE001  the stage run will record it, traceback and all
        return None
    try:
        method = build_method(plugins, run.method.spec(), run.architecture.spec(),
                              data=stage_data, input_shape=main.input_shape,
                              num_classes=main.num_classes, stage=run.stage, seed=run.seed,
                              epochs=int(run.run["epochs"]), device=torch.device("cpu"),
                              upstream=upstream, run=run.run, model=model)
        resolve_streams(method.streams(), stage_data.roles, int(run.run["batch_size"]))
    except UserError as err:
        if err.key == "dataset":
            raise _locate(suite, err, run.dataset, ("dataset",)) from None
        raise _locate(suite, err, run.method, ("method", run.method.name)) from None
    except Exception:  # noqa: BLE001  as above
        return None
    method.eval()
    method.requires_grad_(False)
    return method


def preflight(suite: Suite, plugins, runs: list[StageRun], data: dict[str, StageData]) -> None:
    """Build every distinct network and method once, untrained, before anything is recorded.

    Option values a signature cannot check (an activation name, a network that does not fit the
    data's shape, a CUDA device on a machine without one, a method that needs a layer the
    network lacks, a stream over a split the data does not have) then fail as bad input, exit 2,
    with the suite's key, instead of as FAILED stage runs half-way through a grid. Only
    ``UserError`` counts here: anything else a plugin raises is left for the stage run to
    record, with its traceback.
    """
    by_key = {r.key: r for r in runs}
    methods: dict[str, object] = {}

    def method_of(run: StageRun):
        stage_data = data[_data_key(run.dataset.spec(), bool(run.run.get("download")))]
        key = json.dumps([run.method.spec(), run.architecture.spec(), run.dataset.spec(),
                          sorted((r, by_key[k].method.spec(), by_key[k].architecture.spec())
                                 for r, k in run.refs.items())], sort_keys=True, default=str)
        if key in methods:
            return methods[key]
        methods[key] = None  # anything but a UserError: the stage run records it
        upstream = {}
        for r, k in run.refs.items():
            upstream[r] = method_of(by_key[k])
            if upstream[r] is None:
                return None
        method = _build_untrained(suite, plugins, run, stage_data, upstream)
        methods[key] = method
        return method

    for run in runs:
        try:
            resolve_device(str(run.run["device"]))
        except UserError as err:
            raise UserError(err.message, file=suite.path, key=f"stages.{run.stage}.device",
                            hint=err.hint) from None
        method_of(run)


class Driver:
    """One invocation of ``harness run``: records every stage run it starts, whatever happens."""

    def __init__(self, plan: Plan, tracker: Tracker, plugins, *, home: Path, data_root: Path,
                 executor, progress: Progress, command: str, plugin_modules=(), cores: int | None = None,
                 resume: bool = False, checkpoint_every: float = 30.0, log_model: str = "pickle"):
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
        self.resume, self.checkpoint_every = resume, checkpoint_every
        self.log_model = log_model
        #: seconds spent on MLflow's dataset and model records (the report's tracking cost)
        self.record_seconds = 0.0

    # -- the whole invocation -------------------------------------------------------------------
    def run(self) -> Outcome:
        self.reap()
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
        saved = [r.name for r in todo if resume_progress(self.home, self.plan.identities[r.key])]
        if saved:
            self.progress.say(f"{len(saved)} interrupted stage run(s) "
                              + ("continue from their last saved epoch" if self.resume else
                                 "start again from epoch 1 (add --resume to continue them from "
                                 "their last saved epoch)"))
        self.tracker.start_parent(Path(self.plan.suite.path), self.plan.suite.profile, self.command,
                                  resolved=self.resolved())
        self.progress.start(len(todo))
        jobs = [Job(r.key, r.name, [k for k in r.upstream_keys()
                                    if self.plan.identities[k] not in self.finished_runs])
                for r in todo]
        status = "FINISHED"
        started = time.perf_counter()
        self.executor.on_epoch = self.remote_epoch
        try:
            self.executor.run(jobs, self.prepare, self.execute_here, self.finish)
        except BaseException as exc:
            self.abort(exc)
            raise
        finally:
            self.progress.stop()
        if self.outcome.failed or self.outcome.skipped:
            status = "FAILED"
        self.summarize()
        self.tracker.finish_parent(status, {
            "stage_runs_finished": self.outcome.finished, "stage_runs_failed": self.outcome.failed,
            "stage_runs_skipped": self.outcome.skipped, "stage_runs_already_finished": self.outcome.already,
            "wall_seconds": time.perf_counter() - started})
        return self.outcome

    def reap(self) -> None:
        """Runs a killed driver left RUNNING become KILLED; a live run of the same suite and
        profile on this host is refused (both would train, and record, the same stage runs)."""
        marked, live = self.tracker.reap_orphans()
        if marked:
            self.progress.say(f"marked {marked} stage run(s) left RUNNING by a harness run that "
                              f"died as KILLED; they run again now")
        for inv in live:
            tags = inv.data.tags
            if tags.get(f"{TAG}profile", "") != (self.plan.suite.profile or ""):
                continue
            where = f"pid {tags.get(f'{TAG}pid', '?')} on {tags.get(f'{TAG}host', '?')}"
            if invocation_alive(tags):
                raise UserError(f"suite {self.plan.suite.name!r} is already being run ({where}, "
                                f"MLflow run {inv.info.run_id})", file=self.plan.suite.path,
                                hint="wait for it to end, or stop it; a new run then skips what "
                                     "it finished")
            self.progress.say(f"warning: a run of this suite on another host ({where}) is still "
                              f"marked RUNNING; stage runs it has not finished run here too")

    def abort(self, exc: BaseException) -> None:
        """Record what was running when the invocation stopped: KILLED for Ctrl-C, FAILED with
        the reason for anything else. A second Ctrl-C does not interrupt the bookkeeping."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "KILLED" if interrupted else "FAILED"
        reason = ("interrupted (Ctrl-C)" if interrupted else
                  f"the invocation stopped: {type(exc).__name__}: {exc}")
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for key, run_id in list(self.child_ids.items()):
                try:
                    self.buffers[key].flush()
                except Exception as err:  # noqa: BLE001  the status matters more than the curves
                    self.progress.say(f"warning: the last epochs of {self.by_key[key].name} could "
                                      f"not be logged ({type(err).__name__}: {err})")
                self.tracker.client.set_tag(run_id, f"{TAG}error", reason[:5000])
                self.tracker.client.set_terminated(run_id, status)
            self.child_ids.clear()
            # a run whose start or recording the interruption cut short is still RUNNING
            for run in self.tracker.running_children():
                self.tracker.client.set_tag(run.info.run_id, f"{TAG}error", reason[:5000])
                self.tracker.client.set_terminated(run.info.run_id, status)
            self.tracker.finish_parent(status, {})
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def summarize(self) -> None:
        """The report's tables and claim verdicts on the parent run (harness.report.log_summary);
        a failure there is a warning, never a failed invocation."""
        from .report import log_summary

        try:
            log_summary(self.tracker, self.plan, self.command)
        except Exception as exc:  # noqa: BLE001
            self.progress.say(f"warning: no summary on the parent run: {type(exc).__name__}: {exc}")

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
        params = run_params(run)
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
        t0 = time.perf_counter()
        self.tracker.client.log_inputs(run_id, datasets=dataset_inputs(self.stage_data(run),
                                                                       run.dataset.spec()))
        self.record_seconds += time.perf_counter() - t0
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
            max_threads=self.executor.threads_per_job(self.cores),
            resume_dir=str(resume_dir(self.home, ident)), resume=self.resume,
            checkpoint_every=self.checkpoint_every)

    def stage_data(self, run: StageRun) -> StageData:
        return self.plan.data[_data_key(run.dataset.spec(), bool(run.run.get("download")))]

    def execute_here(self, task: StageTask) -> StageResult:
        run = self.by_identity[task.identity]
        data = self.stage_data(run)
        buffer = self.buffers[run.key]

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            buffer.add(epoch, metrics)
            self.progress.epoch(epoch)

        return run_stage(task, self.plugins, data=data, on_epoch=on_epoch)

    def remote_epoch(self, job: Job, epoch: int, metrics: dict[str, float]) -> None:
        """An epoch a worker reported while its stage run goes on."""
        buffer = self.buffers.get(job.key)
        if buffer is not None:
            buffer.add(epoch, metrics)
            self.progress.epoch(epoch)

    def finish(self, job: Job, result: StageResult) -> None:
        run = self.by_key[job.key]
        run_id = self.child_ids.pop(run.key)
        buffer = self.buffers.pop(run.key)
        buffer.rows = result.history  # the same rows on_epoch saw, or all of them from a worker
        buffer.flush()
        tags = {}
        if result.error:
            tags[f"{TAG}error"] = result.error[:5000]
        if result.traceback and result.artifact_dir:  # a worker's crash, not the engine's file
            trace = Path(result.artifact_dir) / "traceback.txt"
            if not trace.exists():
                trace.parent.mkdir(parents=True, exist_ok=True)
                trace.write_text(result.traceback)
        if result.ok:
            self.record_model(run, run_id, result)
        self.tracker.finish_child(run_id, result.status, result.summary, result.params,
                                  result.artifact_dir, tags)
        # recorded: an interrupted run's saved epochs are of no more use
        shutil.rmtree(resume_dir(self.home, self.plan.identities[run.key]), ignore_errors=True)
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

    def record_model(self, run: StageRun, run_id: str, result: StageResult) -> None:
        """The trained network as the MLflow model ``model`` of the stage run."""
        checkpoint = Path(result.artifact_dir or "") / CHECKPOINT
        if self.log_model == "off" or not checkpoint.is_file():
            return
        t0 = time.perf_counter()
        example = self.stage_data(run).main.test.x[:2]
        source = ModelSource(str(checkpoint), {r: self.source(k) for r, k in run.refs.items()})
        try:
            result.params["model_uri"] = log_network(self.plugins, self.tracker.uri, run_id,
                                                     source, example, self.log_model)
        except Exception as exc:  # noqa: BLE001  a record MLflow refused; the run itself is fine
            self.tracker.client.set_tag(run_id, f"{TAG}model_error", f"{type(exc).__name__}: {exc}")
            self.progress.say(f"{run.name}: the network was not logged as an MLflow model: {exc}")
        self.record_seconds += time.perf_counter() - t0

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


# -- harness plan --------------------------------------------------------------------------------
_COST_RUN_KEYS = ("run.batch_size", "run.device", "run.threads", "evaluate")


def _cost_key(params: dict[str, str], *, with_method: bool = True) -> str:
    """What the speed of an epoch depends on: data, network, method, batch, device, evaluators."""
    prefixes = ("dataset.", "architecture.") + (("method.",) if with_method else ())
    keep = {k: v for k, v in params.items()
            if (k.startswith(prefixes) and k != "method.label") or k in _COST_RUN_KEYS}
    if not with_method:
        keep.pop("evaluate", None)
    return json.dumps(keep, sort_keys=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def recorded_speeds(tracker: Tracker | None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds per epoch (training, evaluators and bookkeeping) of every finished stage run
    in the store, by cost key with and without the method."""
    exact: dict[str, list[float]] = {}
    loose: dict[str, list[float]] = {}
    if tracker is None:
        return exact, loose
    experiments = [e.experiment_id for e in tracker.client.search_experiments()]
    runs, token = [], None
    while experiments:
        page = tracker.client.search_runs(
            experiments, f"tags.`{TAG}identity` != '' and attributes.status = 'FINISHED'",
            max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    for r in runs:
        params = r.data.params
        try:
            epochs = int(params["run.epochs"]) - int(params.get("measured.resumed_from_epoch", 0))
        except (KeyError, ValueError):
            continue
        if epochs <= 0 or not r.info.end_time or not r.info.start_time:
            continue
        per_epoch = (r.info.end_time - r.info.start_time) / 1000 / epochs
        exact.setdefault(_cost_key(params), []).append(per_epoch)
        loose.setdefault(_cost_key(params, with_method=False), []).append(per_epoch)
    return exact, loose


def _makespan(order: list[tuple], deps: dict[tuple, list[tuple]], cost: dict[tuple, float],
              workers: int) -> float:
    """Greedy list scheduling, as the parallel executors dispatch: in order, when the upstream
    runs finished and a worker is free."""
    done: dict[tuple, float] = {}
    free = [0.0] * max(1, workers)
    remaining = list(order)
    while remaining:
        job = next((k for k in remaining if all(d in done for d in deps[k])), remaining[0])
        w = min(range(len(free)), key=free.__getitem__)
        start = max([free[w]] + [done.get(d, 0.0) for d in deps[job]])
        done[job] = free[w] = start + cost[job]
        remaining.remove(job)
    return max(done.values(), default=0.0)


def plan_text(plan: Plan, tracker: Tracker | None, home: Path, jobs: int) -> str:
    """What ``harness plan`` prints: the stage runs a ``run`` would execute, those finished, and
    an estimate of the time from the speeds recorded in the store."""
    import statistics

    finished = tracker.finished() if tracker is not None else {}
    running: set[str] = set()
    if tracker is not None:
        running = {r.data.tags.get(f"{TAG}identity") for r in tracker.runs("RUNNING")}
    exact, loose = recorded_speeds(tracker)
    todo = plan.todo(finished)
    todo_keys = {r.key for r in todo}
    by_key = {r.key: r for r in plan.runs}
    lines = []
    profile = f", profile {plan.suite.profile!r}" if plan.suite.profile else ""
    lines.append(f"suite {plan.suite.name!r}{profile}: {len(plan.runs)} stage runs, "
                 f"{len(plan.runs) - len(todo)} finished, {len(todo)} to run")
    cost: dict[tuple, float] = {}
    unknown = approx = 0
    if todo:
        lines.append("to run:")
        width = max(len(r.name) for r in todo)
        for r in todo:
            params = run_params(r)
            epochs = int(r.run["epochs"])
            ident = plan.identities[r.key]
            saved = resume_progress(home, ident)
            left = epochs - (saved["epoch"] if saved else 0)
            speeds, mark = exact.get(_cost_key(params)), ""
            if not speeds:
                speeds, mark = loose.get(_cost_key(params, with_method=False)), "~"
            estimate = statistics.median(speeds) * left if speeds else None
            cost[r.key] = estimate or 0.0
            unknown += estimate is None
            approx += bool(speeds and mark)
            notes = []
            if saved:
                notes.append(f"saved at epoch {saved['epoch']}: --resume does the last {left}")
            if ident in running:
                notes.append("marked RUNNING in the store")
            after = [by_key[k].name for k in r.upstream_keys() if k in todo_keys]
            if after:
                notes.append("after " + ", ".join(after))
            est = f"{mark}{_seconds(estimate)}" if estimate is not None else "?"
            lines.append(f"  {r.name:<{width}}  epochs {epochs:>6}  {est:>9}"
                         + (f"  ({'; '.join(notes)})" if notes else ""))
    done_runs = [r for r in plan.runs if r.key not in todo_keys]
    if done_runs:
        lines.append("finished:")
        width = max(len(r.name) for r in done_runs)
        for r in done_runs:
            lines.append(f"  {r.name:<{width}}  MLflow run {finished[plan.identities[r.key]].run_id}")
    if todo:
        deps = {r.key: [k for k in r.upstream_keys() if k in todo_keys] for r in todo}
        order = [r.key for r in todo]
        serial = sum(cost.values())
        text = f"estimated time: {_seconds(serial)} one after another"
        if jobs > 1:
            text += f", about {_seconds(_makespan(order, deps, cost, jobs))} with -j {jobs}"
        if unknown:
            text += (f"; {unknown} of {len(todo)} stage runs have no recorded speed yet and count as 0"
                     if unknown < len(todo) else "; no recorded speeds in the store yet")
        lines.append(text)
        if approx:
            lines.append("~: from the speed of the same data, network and batch size with another "
                         "method")
    return "\n".join(lines)
