"""``processes``: stage runs in N worker processes on this machine (``-j N``, default: its cores).

Why worker processes and not threads: the training loop of a small model is Python-bound, so
threads would queue on the interpreter lock; and why each worker gets a deliberate thread count
(``cores // N``, and one for models as small as the MI network): two stage runs on two cores,
each with one thread, are several times faster than the same two runs each asking for two.

Scheduling: a stage run is sent to a worker as soon as every stage it starts from has finished
and a worker is free, in the order ``harness run`` lists them, so that a phase II stage of
seed 0 starts while phase I of seed 3 is still training.

The workers are our own ``multiprocessing`` processes (started by a forkserver that has already
imported torch and the engine, or spawned where there is no forkserver), one pipe each, rather
than a ``ProcessPoolExecutor``: when a worker dies (killed for memory, a crash in native code)
the pool would fail every stage run in flight, while here exactly the stage run it was running
is recorded as failed, and a fresh worker takes the next one. Workers ignore Ctrl-C and SIGTERM
(sent to a whole job by a scheduler), which are the driver's to handle, and die with the driver (each watches the driver's pid), so a killed
``harness run`` leaves no training behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from multiprocessing.connection import wait

from harness.api import StageResult, UserError, hookimpl
from harness.executors import Executor, Ready, adopt, die_with, driver_context, run_task
from harness.placement import GPU_ENV
from harness.storage import StorageFull

#: how often a worker sends the epochs it finished (the driver's live progress and curves)
REPORT_SECONDS = 1.0
#: modules the forkserver imports once, so that each worker starts in milliseconds
PRELOAD = ["harness.executors", "harness.plugins", "plugins.executors._warm"]


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def _worker(conn, driver: tuple[int, str], gpu: str | None = None) -> None:
    """A worker's life: receive (task, context), train, send epochs and the result; repeat.

    ``gpu``: the one GPU this worker sees, set before anything in it starts CUDA."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's to handle, as SIGTERM is
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if gpu is not None:
        os.environ[GPU_ENV] = gpu
    die_with(*driver)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task, context = message
        adopt(context)
        pending: list[tuple[int, dict]] = []
        last = time.monotonic()

        def on_epoch(epoch: int, metrics: dict) -> None:
            nonlocal last
            pending.append((epoch, metrics))
            now = time.monotonic()
            if now - last >= REPORT_SECONDS:
                conn.send(("epochs", list(pending)))
                pending.clear()
                last = now

        try:
            reply = ("result", run_task(task, on_epoch))
        except UserError as err:
            reply = ("user_error", (err.message, err.file, err.key, err.hint))
        except StorageFull as full:  # the driver stops the invocation with one message
            reply = ("storage_full", (full.path, full.state))
        except BaseException as exc:  # noqa: BLE001  the driver records it; the worker retires
            reply = ("crash", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
        except Exception as exc:  # a result that does not pickle
            conn.send(("crash", f"the stage's result could not be sent to the driver: {exc}",
                       traceback.format_exc()))


class _Worker:
    def __init__(self, ctx, number: int, slot: int, gpu: str | None):
        self.conn, child = ctx.Pipe()
        self.slot, self.gpu = slot, gpu
        self.proc = ctx.Process(target=_worker, args=(child, driver_context()["driver"], gpu),
                                name=f"harness-worker-{number}")
        self.proc.start()
        child.close()
        self.job = None
        self.task = None

    def send(self, job, task) -> None:
        self.job, self.task = job, task
        self.conn.send((task, driver_context()))

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.is_alive() and self.job is None:
            with contextlib.suppress(OSError):  # the pipe is closed: the worker is gone already
                self.conn.send(None)
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout)
        self.conn.close()


def _death(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process running it was killed by {name}{hint}"
    return f"the worker process running it exited with code {exitcode}"


class Processes(Executor):
    """Stage runs in N worker processes; each starts when its upstream stage runs finished."""

    def __init__(self, jobs: int = 1):
        super().__init__(jobs)
        self.ctx = _context()
        if self.ctx.get_start_method() == "forkserver":
            # start the server (and its seconds of imports) now, while the driver plans and
            # opens the store, rather than when the first worker is needed
            from multiprocessing import forkserver
            forkserver.ensure_running()

    def run(self, jobs, prepare, execute_here, finish):
        ready = Ready(jobs)
        ctx = self.ctx
        workers: list[_Worker] = []
        idle: list[_Worker] = []
        running: dict = {}  # connection or sentinel -> worker
        started = 0
        free_slots = list(range(self.jobs))  # a dead worker's slot (and GPU) goes to its successor

        def dispatch() -> None:
            nonlocal started
            while idle or len(workers) < self.jobs:
                job = ready.pop()
                if job is None:
                    return
                task = prepare(job)  # only now: a RUNNING run in MLflow is one that trains
                if task is None:  # recorded as skipped
                    ready.done(job.key)
                    continue
                if idle:
                    worker = idle.pop()
                else:
                    started += 1
                    slot = free_slots.pop(0)
                    worker = _Worker(ctx, started, slot, self.placement.slot_gpu(slot))
                    workers.append(worker)
                worker.send(job, task)
                running[worker.conn] = running[worker.proc.sentinel] = worker

        def done(worker: _Worker, result: StageResult, *, reuse: bool) -> None:
            job = worker.job
            running.pop(worker.conn, None)
            running.pop(worker.proc.sentinel, None)
            worker.job = worker.task = None
            if reuse:
                idle.append(worker)
            else:  # retired: its slot (and GPU) goes to its successor
                worker.stop()
                workers.remove(worker)
                free_slots.append(worker.slot)
                free_slots.sort()
            finish(job, result)
            ready.done(job.key)

        try:
            dispatch()
            while running:
                for obj in wait(list(running)):
                    worker = running.get(obj)
                    if worker is None or worker.job is None:
                        continue  # handled through its other handle in this round
                    message = self._read(worker, obj)
                    if message is not None:
                        self._handle(worker, message, done)
                dispatch()
        finally:
            for worker in list(workers):
                worker.stop(timeout=0 if worker.job is not None else 5.0)


    @staticmethod
    def _read(worker: _Worker, obj):
        """The worker's next message; ("dead", error) when its process ended without sending
        one; None when a live worker's handle woke with nothing to read."""
        message = None
        if worker.conn.poll():
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                message = None
        if message is not None:
            return message
        if worker.proc.is_alive() and obj is worker.conn:
            return None
        worker.proc.join(1)
        return ("dead", _death(worker.proc.exitcode))

    def _handle(self, worker: _Worker, message: tuple, done) -> None:
        """One message from a worker: live epochs, its result, a user error or a full disk
        (either ends the invocation with one message), or its death or crash (which fails its stage run alone)."""
        kind = message[0]
        if kind == "epochs":
            if self.on_epoch is not None:
                for epoch, metrics in message[1]:
                    self.on_epoch(worker.job, epoch, metrics)
        elif kind == "result":
            done(worker, message[1], reuse=True)
        elif kind == "user_error":
            text, file, key, hint = message[1]
            raise UserError(text, file=file, key=key, hint=hint)
        elif kind == "storage_full":
            raise StorageFull(*message[1])
        elif kind == "dead":
            done(worker, StageResult(status="FAILED", error=message[1],
                                     artifact_dir=worker.task.artifact_dir), reuse=False)
        else:  # "crash": something escaped the engine's own error handling
            done(worker, StageResult(status="FAILED", error=message[1], traceback=message[2],
                                     artifact_dir=worker.task.artifact_dir), reuse=False)


@hookimpl
def harness_register_executors(register):
    register("processes", Processes)
