"""MLflow bookkeeping: where the store is, experiments, parent/child runs, identities, skipping.

Only the driver process writes to the store (a SQLite file does not like concurrent writers);
workers hand their results back. Metrics are sent in batches (``log_batch``), never one
synchronous call per step: one synchronous metric costs about 25 ms on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from . import store_file
from .errors import UserError
from .interrupts import UninterruptedClient

HOME_ENV = "HARNESS_HOME"
DEFAULT_HOME = ".harness"
TAG = "harness."
FLUSH_SECONDS = 10.0
MAX_BATCH = 1000
# The kind of experiment MLflow records for training runs. MLflow 3.17's UI ignores it while its
# GenAI / model-training switch is shown (the mode is the browser's; harness/ui.py prints links
# that set it), but other MLflow versions and clients read it to tell training from GenAI work.
KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as an experiment's description


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``--home`` wins, then ``$HARNESS_HOME``, then ``./.harness``; always absolute, so runs
    started from another working directory land in the same store."""
    chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def tracking_uri(home: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` when set (a server, another database), else SQLite in the home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def check_writable(home: Path) -> None:
    """Refuse, before anything starts, a home this process cannot write: MLflow would retry for
    minutes and then fail with a traceback. Only the default SQLite store lives in the home."""
    if not tracking_uri(home).startswith("sqlite:"):
        return
    hint = "give a writable folder with --home or $HARNESS_HOME"
    existing = next(p for p in (home, *home.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UserError(f"the harness home {home} cannot be created: {existing} is not a folder",
                        key="--home", hint=hint)
    if existing != home:  # created when the store is; nothing is made before the run starts
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"the harness home {home} cannot be created in {existing}",
                            key="--home", hint=hint)
        return
    try:
        # creating (and removing) a file is the check: access() does not see read-only mounts
        with tempfile.NamedTemporaryFile(dir=home, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"the harness home {home} is not writable: {exc.strerror or exc}",
                        key="--home", hint=hint) from None
    db = home / "mlflow.db"
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise UserError(f"the tracking store {db} is not writable", key="--home", hint=hint)


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def mlflow_client(uri: str):
    """The one way the harness opens a store: MLflow's client, with the schema-migration
    chatter of a new store (MLflow's and alembic's INFO lines) silenced, and each call shielded
    from Ctrl-C (``harness.interrupts`` says why)."""
    from mlflow.tracking import MlflowClient  # a slow import: only when a store is opened

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs every failed write with a traceback before raising it; the harness reports the
    # raised error itself (a full disk as one line: harness.storage)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return UninterruptedClient(MlflowClient(tracking_uri=uri))


def local_artifacts(artifact_uri: str) -> Path | None:
    """The folder of a run's artifacts when the store keeps them on this file system
    (``file://`` or a plain path), else None (a server's artifacts are downloaded)."""
    if artifact_uri.startswith("file://"):
        return Path(unquote(urlparse(artifact_uri).path))
    if artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def search_all(client, experiment_ids: str | list[str], flt: str) -> list:
    """Every run of the experiments that matches ``flt``, all pages of MLflow's search."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    out, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string=flt, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries a result depends on; a library not
    installed as a distribution (e.g. a source checkout on the path) is left out."""
    found = {dist: _installed_version(dist) for dist in
             ("harness", "torch", "torchvision", "mlflow", "pluggy", "numpy", "scikit-learn")}
    return {"python": platform.python_version(), **{k: v for k, v in found.items() if v}}


def git_commit(path: Path) -> str:
    folder = path if path.is_dir() else path.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def identity(config: dict[str, Any], upstream: dict[str, str], versions: dict[str, str],
             fingerprint: str, code: dict[str, str] | None = None) -> str:
    """A stage run's identity: its resolved config (without settings that cannot change the
    result), its upstream identities, the versions of the plugins it uses, its data and the
    digests of the plugins' source (``harness.codeid``). Without ``code`` it is the identity
    runs had before code digests existed, which ``harness plan`` uses to tell stale runs."""
    config = json.loads(json.dumps(config, sort_keys=True, default=str))
    config.get("run", {}).pop("download", None)
    config.get("run", {}).pop("eval_batch_size", None)
    # whether a run trains stacked with others changes nothing it reports (within rounding,
    # tests/test_stacking.py), so finished runs are skipped whichever way they trained
    config.get("run", {}).pop("stack", None)
    parts = {"config": config, "upstream": upstream, "versions": versions, "data": fingerprint}
    if code is not None:
        parts["code"] = code
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def process_started(pid: int) -> str:
    """When a process started (clock ticks since boot, from /proc), so that a pid the system
    gave to another process since is not mistaken for the driver that wrote a run."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, started: str = "") -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # killed, not yet reaped by its parent
    except (OSError, IndexError):
        return True
    return not started or process_started(pid) == started


def invocation_alive(tags: dict[str, str]) -> bool | None:
    """Whether the ``harness run`` that created a parent run is still running: None when it ran
    on another host (or wrote no pid), where this process cannot look."""
    if tags.get(f"{TAG}host") != platform.node() or not tags.get(f"{TAG}pid", "").isdigit():
        return None
    return process_alive(int(tags[f"{TAG}pid"]), tags.get(f"{TAG}pid_started", ""))


@dataclass
class FinishedRun:
    run_id: str
    name: str
    artifact_uri: str


class Tracker:
    """The MLflow side of one ``harness run`` invocation."""

    @classmethod
    def existing(cls, home: Path, suite_name: str) -> "Tracker | None":
        """The store as it is, for reading (``harness plan``): None when it or the suite's
        experiment does not exist yet, and nothing is created either way."""
        db = store_file.sqlite_path(tracking_uri(home))
        if db is not None and not store_file.readable(db):
            return None
        tracker = cls(home, suite_name, create=False)
        return tracker if tracker.experiment_id is not None else None

    def __init__(self, home: Path, suite_name: str, *, create: bool = True,
                 description: str = ""):
        self.home = home
        self.uri = tracking_uri(home)
        self.note: str | None = None  # what was repaired, for the user
        db = store_file.sqlite_path(self.uri)
        if create:
            check_writable(home)
            if db is not None:
                self.note = store_file.ensure_store(db, (home / "artifacts").as_uri())
        self.client = mlflow_client(self.uri)
        self.suite_name = suite_name
        if create:
            self.experiment_id = self._experiment(suite_name)
            self._describe(description)
        else:
            exp = self.client.get_experiment_by_name(suite_name)
            self.experiment_id = exp.experiment_id if exp is not None else None
        self.parent_id: str | None = None

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.home / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location,
                                             tags={KIND_TAG: TRAINING_KIND})

    def _describe(self, description: str) -> None:
        """The suite's ``description:`` as the experiment's description in the MLflow UI."""
        text = " ".join(description.split())
        exp = self.client.get_experiment(self.experiment_id)
        if KIND_TAG not in exp.tags:  # a store made before the harness set the kind
            self.client.set_experiment_tag(self.experiment_id, KIND_TAG, TRAINING_KIND)
        if text and exp.tags.get(NOTE_TAG) != text:
            self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, text)

    # -- lookups ------------------------------------------------------------------------------
    def runs(self, status: str | None = None) -> list:
        """All stage runs of this experiment (children, not invocation parents)."""
        flt = f"tags.`{TAG}identity` != ''"
        if status:
            flt += f" and attributes.status = '{status}'"
        return search_all(self.client, self.experiment_id, flt)

    def finished(self) -> dict[str, FinishedRun]:
        """Identity -> the finished stage run that has it (the newest if, oddly, several)."""
        found: dict[str, FinishedRun] = {}
        for run in sorted(self.runs("FINISHED"), key=lambda r: r.info.start_time or 0):
            ident = run.data.tags.get(f"{TAG}identity")
            found[ident] = FinishedRun(run.info.run_id, run.info.run_name, run.info.artifact_uri)
        return found

    def running_children(self) -> list:
        """Stage runs of this invocation still marked RUNNING."""
        if self.parent_id is None:
            return []
        return search_all(self.client, self.experiment_id,
                          f"tags.`mlflow.parentRunId` = '{self.parent_id}' "
                          f"and attributes.status = 'RUNNING'")

    def reap_orphans(self) -> tuple[int, list]:
        """Mark as KILLED the runs left RUNNING by a ``harness run`` that died (SIGKILL, power
        loss): its parent run and every stage run it had started. Returns how many stage runs
        were marked, and the invocations that are still alive (or on another host, unknown)."""
        running = search_all(self.client, self.experiment_id, "attributes.status = 'RUNNING'")
        parents = {r.info.run_id: r for r in running if r.data.tags.get(f"{TAG}kind") == "invocation"}
        live = {pid: r for pid, r in parents.items() if invocation_alive(r.data.tags) is not False}
        marked = 0
        for run in running:
            tags = run.data.tags
            if run.info.run_id in parents or tags.get("mlflow.parentRunId") in live:
                continue
            parent = parents.get(tags.get("mlflow.parentRunId"))
            who = (f"pid {parent.data.tags.get(f'{TAG}pid')} on {parent.data.tags.get(f'{TAG}host')}"
                   if parent is not None else "no longer running")
            self.client.set_tag(run.info.run_id, f"{TAG}orphaned",
                                f"the harness run that started it ({who}) died; marked KILLED "
                                f"by the next run of the suite")
            self.client.set_terminated(run.info.run_id, "KILLED")
            marked += bool(tags.get(f"{TAG}identity"))
        for run_id, run in parents.items():
            if run_id not in live:
                self.client.set_tag(run_id, f"{TAG}orphaned", "this harness run died; marked "
                                                              "KILLED by the next run of the suite")
                self.client.set_terminated(run_id, "KILLED")
        return marked, list(live.values())

    def artifact_path(self, run: FinishedRun, path: str) -> str:
        """A local path to one artifact: the file itself for a local store, else a download."""
        root = local_artifacts(run.artifact_uri)
        if root is not None and (root / path).exists():
            return str(root / path)
        cache = self.home / "cache" / run.run_id
        cache.mkdir(parents=True, exist_ok=True)
        return self.client.download_artifacts(run.run_id, path, str(cache))

    # -- writing -----------------------------------------------------------------------------
    def start_parent(self, suite_path: Path, profile: str | None, command: str,
                     resolved: dict) -> str:
        tags = {
            f"{TAG}suite": self.suite_name, f"{TAG}kind": "invocation",
            f"{TAG}profile": profile or "", f"{TAG}command": command,
            f"{TAG}git_commit": git_commit(suite_path.resolve()),
            f"{TAG}versions": json.dumps(library_versions(), sort_keys=True),
            f"{TAG}host": platform.node(),
            f"{TAG}pid": str(os.getpid()), f"{TAG}pid_started": process_started(os.getpid()),
        }
        name = f"{self.suite_name}@{time.strftime('%Y-%m-%d %H:%M:%S')}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        if suite_path.is_file():
            self.client.log_artifact(self.parent_id, str(suite_path), "suite")
        self.client.log_dict(self.parent_id, resolved, "suite/resolved.json")
        return self.parent_id

    def finish_parent(self, status: str, summary: dict[str, float]) -> None:
        if self.parent_id is None:
            return
        from mlflow.entities import Metric  # MLflow is imported only once a store is opened
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0)
                                                       for k, v in summary.items()])
        self.client.set_terminated(self.parent_id, status)

    def start_child(self, name: str, tags: dict[str, str], params: dict[str, str],
                    config: dict) -> str:
        from mlflow.entities import Param  # as above
        all_tags = {"mlflow.parentRunId": self.parent_id, **tags}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])
        self.client.log_dict(run_id, config, "config.json")
        return run_id

    def log_metrics(self, run_id: str, rows: list[dict[str, float]]) -> None:
        """Per-epoch rows (each with its 'epoch') as MLflow metrics, in batches."""
        from mlflow.entities import Metric  # MLflow is imported only once a store is opened
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"]))
                   for row in rows for k, v in row.items() if k != "epoch"]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + MAX_BATCH])

    def finish_child(self, run_id: str, status: str, summary: dict[str, float],
                     params: dict[str, Any], artifact_dir: str | None, tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, Param, RunTag  # as above
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(f"final_{k}", float(v), now, 0) for k, v in summary.items()],
            params=[Param(f"measured.{k}", str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()])
        if artifact_dir and Path(artifact_dir).is_dir() and any(Path(artifact_dir).iterdir()):
            self.client.log_artifacts(run_id, artifact_dir)
        self.client.set_terminated(run_id, status)
        if artifact_dir:
            shutil.rmtree(artifact_dir, ignore_errors=True)


class EpochBuffer:
    """Collects per-epoch rows of a running stage and sends them every ``FLUSH_SECONDS``.

    The MLflow UI then shows training curves while a long stage runs, at the cost of one batched
    call every few seconds instead of one call per metric.
    """

    def __init__(self, tracker: Tracker, run_id: str, interval: float = FLUSH_SECONDS):
        self.tracker, self.run_id, self.interval = tracker, run_id, interval
        self.rows: list[dict[str, float]] = []
        self.sent = 0
        self.last = time.monotonic()

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        self.rows.append(dict(metrics))
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        pending = self.rows[self.sent:]
        if pending:
            self.tracker.log_metrics(self.run_id, pending)
            self.sent = len(self.rows)
        self.last = time.monotonic()


def short_sys() -> str:
    return f"{platform.machine()} {sys.platform}"
