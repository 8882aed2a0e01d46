"""The signals that stop ``harness run``: Ctrl-C (SIGINT) and a scheduler's SIGTERM.

SLURM at a job's time limit, Kubernetes and systemd on preemption or stop send SIGTERM and,
some seconds later (SLURM's KillWait: 30 s by default), SIGKILL. Python's default for SIGTERM
is to die on the spot, leaving the parent run and the stage runs in flight RUNNING in the
store. :func:`sigterm_as_interrupt` turns it into :class:`Terminated`, a KeyboardInterrupt,
so that it takes the path Ctrl-C takes: workers stop, the runs in flight are recorded KILLED
with the signal as the reason, their last saved epochs stay for ``--resume``. While that
bookkeeping runs, :func:`bounded_bookkeeping` guarantees it ends before the SIGKILL: a second
SIGTERM, or :data:`GRACE_SECONDS` passing, exits at once.

Store writes that a signal cannot cut in half: a KeyboardInterrupt raised inside one of
MLflow's SQLAlchemy sessions leaves that session's SQLite transaction open; the bookkeeping
that follows then waits on the lock the cut-off transaction holds and fails with ``database
is locked``, so the invocation ends FAILED with exit 1 instead of KILLED with 130. Python
delivers a signal between any two bytecodes, so no care inside MLflow prevents that; holding
the signal back while one store call runs and delivering it when the call returns does
(:class:`Uninterrupted`). A call takes milliseconds, so Ctrl-C still feels immediate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

#: the signals ``harness run`` turns into an orderly stop
STOPPING = (signal.SIGINT, signal.SIGTERM)
#: how long the bookkeeping after SIGTERM may take: well inside SLURM's default KillWait (30 s)
GRACE_SECONDS = 20.0
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python delivers it, to be handled as Ctrl-C is."""

    reason = "terminated (SIGTERM)"


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (in the main thread only, where
    Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_now(signum: int, frame: Any) -> None:
    os._exit(EXIT_TERMINATED)


@contextlib.contextmanager
def bounded_bookkeeping(exc: BaseException) -> Iterator[None]:
    """The recording after a stop: a second Ctrl-C does not interrupt it; after SIGTERM, a
    second SIGTERM or :data:`GRACE_SECONDS` end the process at once, before the SIGKILL that
    follows would, with exit 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOPPING}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    timer = None
    if isinstance(exc, Terminated):
        signal.signal(signal.SIGTERM, _exit_now)
        timer = threading.Timer(GRACE_SECONDS, os._exit, (EXIT_TERMINATED,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Uninterrupted:
    """Hold SIGINT and SIGTERM back for the duration of a ``with`` block and deliver them
    afterwards, to whatever handler was installed before (``SIG_IGN`` swallows one, Python's
    default for SIGINT raises KeyboardInterrupt). Outside the main thread signals cannot be
    handled, so it does nothing there; nested blocks defer to the outermost."""

    _depth = 0

    def __enter__(self) -> "Uninterrupted":
        self.active = (threading.current_thread() is threading.main_thread()
                       and Uninterrupted._depth == 0)
        Uninterrupted._depth += 1
        if self.active:
            self.received: list[tuple[int, Any]] = []
            self.previous = {sig: signal.signal(sig, self._hold) for sig in STOPPING}
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        self.received.append((signum, frame))

    def __exit__(self, *exc: object) -> None:
        Uninterrupted._depth -= 1
        if not self.active:
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        for signum, frame in self.received[:1]:  # the first decides, as it would have
            handler = self.previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:  # what the signal would have done: end the process
                signal.raise_signal(signum)


class UninterruptedClient:
    """An MLflow client whose every method runs inside :class:`Uninterrupted`."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with Uninterrupted():
                return attr(*args, **kwargs)
        return call
