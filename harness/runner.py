"""The driver of ``harness run``: skip what finished, dispatch the rest, record everything.

Given a plan (``harness.plan``: stage runs, their data and identities), it asks MLflow which
identities already finished and hands the rest to the executor. A parent MLflow run is created
only when there is something to run, so a repeated invocation leaves the store untouched. What
the invocation's parent run shows at the end (the report's tables) is the CLI's to give, as
``summary``: the driver renders no report.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .api import StageResult
from .engine import CHECKPOINT, ModelSource, StageTask, run_stage
from .errors import UserError
from .estimate import expected_seconds
from .executors import Job, cores_here
from .groups import Unit, form_groups
from .interrupts import Terminated, bounded_bookkeeping
from .plan import Plan, resume_dir, resume_progress, run_params
from .progress import Progress
from .records import dataset_inputs, log_network
from .stacked_run import GroupResult, GroupTask, run_group
from .suite import StageRun
from .train.build import StageData
from .tracking import TAG, EpochBuffer, FinishedRun, Tracker, git_commit, invocation_alive, library_versions


@dataclass
class Outcome:
    finished: int = 0
    failed: int = 0
    skipped: int = 0
    already: int = 0
    messages: list[str] = field(default_factory=list)
    #: failed or skipped runs the suite expects to fail (``expect_failure:``), among the above
    expected: int = 0
    expected_messages: list[str] = field(default_factory=list)
    #: runs the suite expects to fail that finished: reported, not an error
    trained_anyway: list[str] = field(default_factory=list)

    @property
    def unexpected(self) -> int:
        return self.failed + self.skipped - self.expected

    @property
    def exit_code(self) -> int:
        """1 for a failure the suite does not expect; expected ones are the finding, not an
        error (as pytest's xfail)."""
        return 1 if self.unexpected else 0


class Driver:
    """One invocation of ``harness run``: records every stage run it starts, whatever happens."""

    def __init__(self, plan: Plan, tracker: Tracker, plugins, *, home: Path, data_root: Path,
                 executor, progress: Progress, command: str, plugin_modules=(), cores: int | None = None,
                 resume: bool = False, checkpoint_every: float = 30.0, force: bool = False,
                 selected: set[tuple] | None = None, log_model: str = "pickle",
                 summary: Callable[[Tracker, Plan, str], object] | None = None):
        self.plan, self.tracker, self.plugins = plan, tracker, plugins
        self.home, self.data_root, self.executor = home, data_root, executor
        self.progress, self.command = progress, command
        self.plugin_modules = tuple(plugin_modules)
        self.cores = cores_here() if cores is None else cores
        self.by_key = {r.key: r for r in plan.runs}
        self.by_identity = {plan.identities[r.key]: r for r in plan.runs}
        self.finished_runs: dict[str, FinishedRun] = {}
        self.failed: dict[tuple, str] = {}
        #: runs whose failure (or skip) the suite expects: their dependants' skips are expected too
        self.expected: set[tuple] = set()
        self.child_ids: dict[tuple, str] = {}
        self.buffers: dict[tuple, EpochBuffer] = {}
        self.outcome = Outcome()
        self.versions = library_versions()
        self.commit = git_commit(Path(plan.suite.path).resolve())
        self.resume, self.checkpoint_every = resume, checkpoint_every
        self.force, self.selected = force, selected
        self.log_model = log_model
        #: ``summary(tracker, plan, command)`` gives the parent run the report's tables
        self.summary = summary
        #: seconds spent on MLflow's dataset and model records (the report's tracking cost)
        self.record_seconds = 0.0
        #: job key of a stacked group -> its members' run keys, why they stack, and the members
        #: that started (the others were skipped)
        self.groups: dict[tuple, list[tuple]] = {}
        self.reasons: dict[tuple, str] = {}
        self.prepared: dict[tuple, list[tuple]] = {}

    # -- the whole invocation -------------------------------------------------------------------
    def run(self) -> Outcome:
        self.reap()
        self.finished_runs = self.tracker.finished()
        todo = self.plan.todo(self.finished_runs, force=self.force, selected=self.selected)
        total = len(self.plan.runs if self.selected is None else self.selected)
        self.outcome.already = total - len(todo)
        if not todo:
            self.progress.say(f"all {total} stage runs of suite "
                              f"{self.plan.suite.name!r} already finished; nothing to run")
            return self.outcome
        if self.outcome.already:
            self.progress.say(f"{self.outcome.already} of {total} stage runs already "
                              f"finished; running the other {len(todo)}")
        saved = [r.name for r in todo if resume_progress(self.home, self.plan.identities[r.key])]
        if saved:
            self.progress.say(f"{len(saved)} interrupted stage run(s) "
                              + ("continue from their last saved epoch" if self.resume else
                                 "start again from epoch 1 (add --resume to continue them from "
                                 "their last saved epoch)"))
        self.tracker.start_parent(Path(self.plan.suite.path), self.plan.suite.profile, self.command,
                                  resolved=self.resolved())
        # the live bar weighs each run by its expected time; only a terminal shows it
        self.progress.start(len(todo), expected_seconds(todo, self.tracker)
                            if self.progress.live else None)
        jobs = self.jobs(todo)
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
        if self.outcome.unexpected:
            status = "FAILED"
        self.summarize()
        self.tracker.finish_parent(status, {
            "stage_runs_finished": self.outcome.finished, "stage_runs_failed": self.outcome.failed,
            "stage_runs_skipped": self.outcome.skipped, "stage_runs_already_finished": self.outcome.already,
            "wall_seconds": time.perf_counter() - started})
        return self.outcome

    def jobs(self, todo: list[StageRun]) -> list[Job]:
        """What the executor dispatches: each stage run, or a group trained stacked (where the
        executor can run one), after the jobs its upstream runs are in."""
        if getattr(self.executor, "stacks", False):
            units = form_groups(self.plan, todo, self.plugins, self.executor.jobs)
        else:
            units = [Unit([r.key], [r.name]) for r in todo]
        job_of = {}
        for unit in units:
            key = ("stacked", *unit.keys) if unit.stacked else unit.keys[0]
            job_of.update({k: key for k in unit.keys})
            if unit.stacked:
                self.groups[key], self.reasons[key] = list(unit.keys), unit.reason
        jobs = []
        for unit in units:  # upstream runs not in todo have finished
            key = job_of[unit.keys[0]]
            deps = {job_of[k] for m in unit.keys for k in self.by_key[m].upstream_keys()
                    if k in job_of and job_of[k] != key}
            name = unit.names[0] if not unit.stacked else f"{unit.names[0]} (+{len(unit.keys) - 1})"
            jobs.append(Job(key, name, sorted(deps, key=str)))
        return jobs

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
        """Record what was running when the invocation stopped: KILLED for Ctrl-C or SIGTERM,
        FAILED with the reason for anything else; ``bounded_bookkeeping`` keeps a second
        Ctrl-C from interrupting it and a SIGTERM's from outlasting the scheduler's grace."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "KILLED" if interrupted else "FAILED"
        reason = (Terminated.reason if isinstance(exc, Terminated) else
                  "interrupted (Ctrl-C)" if interrupted else
                  f"the invocation stopped: {type(exc).__name__}: {exc}")
        with bounded_bookkeeping(exc):
            try:
                self._record_stopped(status, reason)
            except Exception as err:  # noqa: BLE001  a full store must not hide why it stopped
                self.progress.say(f"warning: the store could not record the stopped runs "
                                  f"({type(err).__name__}: {str(err)[:200]}); the next "
                                  f"`harness run` of the suite marks them KILLED")

    def _record_stopped(self, status: str, reason: str) -> None:
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

    def summarize(self) -> None:
        """The report's tables and claim verdicts on the parent run (``summary``); a failure
        there is a warning, never a failed invocation."""
        if self.summary is None:
            return
        try:
            self.summary(self.tracker, self.plan, self.command)
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

    def prepare(self, job: Job) -> StageTask | GroupTask | None:
        members = self.groups.get(job.key)
        if members is None:
            return self.prepare_run(self.by_key[job.key])
        tasks = [t for t in (self.prepare_run(self.by_key[k]) for k in members) if t is not None]
        self.prepared[job.key] = [self.by_identity[t.identity].key for t in tasks]
        return GroupTask(tasks, self.reasons[job.key]) if tasks else None

    def prepare_run(self, run: StageRun) -> StageTask | None:
        bad_keys = [k for k in run.upstream_keys() if k in self.failed]
        bad = [self.by_key[k].name for k in bad_keys]
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
            if run.expected_failure or all(k in self.expected for k in bad_keys):
                self._expected(run, reason)
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
        return self.plan.stage_data(run)

    def execute_here(self, task: StageTask | GroupTask) -> StageResult | GroupResult:
        if isinstance(task, GroupTask):
            data = [self.stage_data(self.by_identity[t.identity]) for t in task.tasks]
            return run_group(task, self.plugins, data=data, on_epoch=self.group_epoch)
        run = self.by_identity[task.identity]
        data = self.stage_data(run)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            self.epoch(run.key, epoch, metrics)

        return run_stage(task, self.plugins, data=data, on_epoch=on_epoch)

    def epoch(self, key: tuple, epoch: int, metrics: dict[str, float]) -> None:
        buffer = self.buffers.get(key)
        if buffer is not None:
            buffer.add(epoch, metrics)
            self.progress.epoch(self.by_key[key].name, epoch)

    def group_epoch(self, epoch: int, rows: dict[str, dict[str, float]]) -> None:
        """An epoch of a stacked group: each member's row, by identity."""
        for ident, metrics in rows.items():
            self.epoch(self.by_identity[ident].key, epoch, metrics)

    def remote_epoch(self, job: Job, epoch: int, metrics: dict) -> None:
        """An epoch a worker reported while its stage run (or group) goes on."""
        if job.key in self.groups:
            self.group_epoch(epoch, metrics)
        else:
            self.epoch(job.key, epoch, metrics)

    def finish(self, job: Job, result: StageResult | GroupResult) -> None:
        if job.key not in self.groups:
            self.finish_run(self.by_key[job.key], result)
            return
        keys = self.prepared.pop(job.key, [])
        if isinstance(result, GroupResult):
            results = result.results
        else:  # the worker training the group died: every member it trained failed
            results = [StageResult(status="FAILED", error=result.error, traceback=result.traceback,
                                   artifact_dir=str(self.home / "staging" / self.plan.identities[k]))
                       for k in keys]
        for key, member in zip(keys, results):
            self.finish_run(self.by_key[key], member)

    def finish_run(self, run: StageRun, result: StageResult) -> None:
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
            metric = self.plan.suite.setting(run.setting).report.metric.removeprefix("final_")
            value = result.summary.get(metric)
            detail = f"{metric}={value:.4f}" if value is not None else ""
            self.progress.done(run.name, "FINISHED", f"{detail} {result.summary.get('train_seconds', 0):.1f}s")
            if run.expected_failure:
                self.outcome.trained_anyway.append(run.name)
        else:
            self.outcome.failed += 1
            self.failed[run.key] = result.error or "failed"
            if run.expected_failure:
                self._expected(run, result.error)
            else:
                self.outcome.messages.append(f"{run.name}: {result.error}")
            self.progress.done(run.name, "FAILED" + (" (expected)" if run.expected_failure else ""),
                               result.error or "")

    def _expected(self, run: StageRun, why: str | None) -> None:
        """A failure or skip the suite expects: counted apart, and its dependants' skips are
        expected too."""
        self.expected.add(run.key)
        self.outcome.expected += 1
        self.outcome.expected_messages.append(f"{run.name}: {why}")

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
        expected = {f"{TAG}expected_failure": run.expected_failure[:5000]} if run.expected_failure else {}
        return expected | {
            f"{TAG}suite": run.suite, f"{TAG}setting": run.setting, f"{TAG}stage": run.stage,
            f"{TAG}method": run.row, f"{TAG}stage_method": run.method.label,
            f"{TAG}row": re.sub(r"/seed\d+$", "", run.name),  # its seeds, grouped in the UI
            f"{TAG}method_name": run.method.name,
            f"{TAG}dataset": run.dataset.label, f"{TAG}architecture": run.architecture.label,
            f"{TAG}seed": str(run.seed), f"{TAG}replicate": str(run.replicate),
            f"{TAG}cell": json.dumps(run.cell, sort_keys=True),
            f"{TAG}identity": self.plan.identities[run.key],
            f"{TAG}identity_base": self.plan.bases.get(run.key, ""),
            f"{TAG}code": json.dumps(self.plan.code.get(run.key, {}), sort_keys=True),
            f"{TAG}data_fingerprint": self.plan.fingerprints[run.key],
            f"{TAG}profile": self.plan.suite.profile or "",
            f"{TAG}git_commit": self.commit,
            f"{TAG}versions": json.dumps(self.versions, sort_keys=True),
        }
