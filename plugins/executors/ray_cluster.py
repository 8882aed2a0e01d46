"""``ray``: the scheduling of ``processes`` on a Ray cluster (``--address``; default: a local
Ray started for this run and stopped after it). Ray is an optional extra:
``pip install 'harness[ray]'``.

Each stage run is one Ray task asking for as many CPUs as threads it may use, with no automatic
retries (a stage run that crashed a worker is recorded as failed, not silently run twice). The
driver stays the only process that writes to the tracking store.

A cluster's nodes need not share a file system with the driver: the checkpoints a stage run
starts from travel with the task, and the files it writes (its checkpoint, plots) come back with
its result. Two things do stay on the node: file-backed data sets are read from the same
``--data-root`` path there, and the state ``--resume`` continues from is saved under the same
home path there when it can be written (on a local Ray, and on clusters sharing that folder);
elsewhere a stage run is not resumable. Epochs are reported when a stage run ends, not while it
trains.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
from pathlib import Path

from harness.api import StageResult, UserError, hookimpl
from harness.executors import Executor, Ready, adopt, cores_here, driver_context, run_task


def _sources(task):
    """Every upstream checkpoint a task reads (``from:`` and refs, with the refs' own refs)."""
    todo = ([task.init_from] if task.init_from else []) + list(task.refs.values())
    while todo:
        source = todo.pop()
        yield source
        todo.extend(source.refs.values())


def _ship(task) -> dict[str, bytes]:
    return {s.checkpoint: Path(s.checkpoint).read_bytes() for s in _sources(task)}


def _on_node(task, files: dict[str, bytes], context: dict):
    """Runs in a Ray worker: put the shipped checkpoints where the task can read them, train
    into a private folder, and return the result with the files it wrote."""
    adopt(context)
    task = copy.deepcopy(task)
    scratch = Path(tempfile.mkdtemp(prefix="harness-ray-"))
    try:
        for i, source in enumerate(_sources(task)):
            if not Path(source.checkpoint).is_file():
                local = scratch / "upstream" / f"{i}.pt"
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(files[source.checkpoint])
                source.checkpoint = str(local)
        if task.resume_dir:
            try:
                Path(task.resume_dir).mkdir(parents=True, exist_ok=True)
            except OSError:
                task.resume_dir = None
        task.artifact_dir = str(scratch / "artifacts")
        try:
            result = run_task(task)
        except UserError as err:
            return "user_error", (err.message, err.file, err.key, err.hint)
        out = Path(task.artifact_dir)
        artifacts = {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}
        return "result", (result, artifacts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayExecutor(Executor):
    """Stage runs as Ray tasks, each started when its upstream stage runs finished. Each
    trains alone: a task ships its own upstream checkpoints, which a group's would not be."""

    stacks = False

    def __init__(self, jobs: int = 1, address: str | None = None):
        super().__init__(jobs)
        self.address = address
        self.cpus: int | None = None
        self.cluster_gpus = 0.0

    def threads_per_job(self, cores: int) -> int:
        return super().threads_per_job(self.cpus or cores)

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray, which is not installed", key="--executor",
                            hint="pip install 'harness[ray]', or use --executor processes") from None
        started = False
        if not ray.is_initialized():
            import logging
            kwargs = dict(logging_level=logging.WARNING, include_dashboard=False,
                          configure_logging=True)
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=cores_here(), **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot reach the Ray cluster {self.address or '(local)'}: {exc}",
                                key="--address",
                                hint="start it with `ray start --head`, or leave --address out "
                                     "for a local Ray") from None
            started = True
        self.cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        self.cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        return ray, started

    def _gpus(self, task) -> float:
        """The share of a GPU a stage run asks for: none on the CPU, 1 / --runs-per-gpu when it
        may use CUDA and the cluster has GPUs; a stage run that requires CUDA on a cluster
        without any is bad input rather than a task that waits forever."""
        device = str(task.run.get("device", "auto"))
        if device == "cpu":
            return 0
        if not self.cluster_gpus:
            if device.startswith("cuda"):
                raise UserError(f"stage run {task.name} asks for device {device!r}, but the Ray "
                                "cluster has no GPU", key="device",
                                hint="use `device: auto` (CPU where there is no GPU), or add "
                                     "GPU nodes to the cluster")
            return 0
        return self.placement.share

    def run(self, jobs, prepare, execute_here, finish):
        ray, started = self._connect()
        remote = ray.remote(_on_node)
        ready = Ready(jobs)
        running: dict = {}  # object ref -> (job, task)
        try:
            def dispatch() -> None:
                while len(running) < self.jobs:
                    job = ready.pop()
                    if job is None:
                        return
                    task = prepare(job)
                    if task is None:
                        ready.done(job.key)
                        continue
                    ref = remote.options(num_cpus=task.max_threads, num_gpus=self._gpus(task),
                                         max_retries=0).remote(task, _ship(task), driver_context())
                    running[ref] = (job, task)

            dispatch()
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    job, task = running.pop(ref)
                    try:
                        kind, payload = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        kind, payload = "crash", exc
                    if kind == "user_error":
                        text, file, key, hint = payload
                        raise UserError(text, file=file, key=key, hint=hint)
                    if kind == "crash":
                        result = StageResult(status="FAILED", artifact_dir=task.artifact_dir,
                                             error=f"the Ray task running it failed: "
                                                   f"{type(payload).__name__}: "
                                                   f"{str(payload).splitlines()[0] if str(payload) else ''}",
                                             traceback=str(payload))
                    else:
                        result, artifacts = payload
                        out = Path(task.artifact_dir)
                        for rel, blob in artifacts.items():
                            (out / rel).parent.mkdir(parents=True, exist_ok=True)
                            (out / rel).write_bytes(blob)
                        result.artifact_dir = str(out)
                    finish(job, result)
                    ready.done(job.key)
                dispatch()
        finally:
            for ref in running:
                with contextlib.suppress(Exception):  # finished or gone already
                    ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


@hookimpl
def harness_register_executors(register):
    register("ray", RayExecutor)
