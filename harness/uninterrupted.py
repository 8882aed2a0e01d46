"""Store writes that Ctrl-C cannot cut in half.

A KeyboardInterrupt raised inside one of MLflow's SQLAlchemy sessions leaves that session's
SQLite transaction open; the bookkeeping that follows Ctrl-C (marking the running runs KILLED)
then waits on the lock the cut-off transaction holds and fails with ``database is locked``,
so the invocation ends FAILED with exit 1 instead of KILLED with 130. Python delivers a
signal between bytecodes, so no amount of care inside MLflow prevents it; what does is to
hold SIGINT back while one store call runs and deliver it as soon as the call returns, which
is what :class:`Uninterrupted` does. A call takes milliseconds, so Ctrl-C still feels
immediate.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Uninterrupted:
    """Hold SIGINT back for the duration of a ``with`` block and deliver it afterwards, to
    whatever handler was installed before (``SIG_IGN`` swallows it, Python's default raises
    KeyboardInterrupt). Outside the main thread signals cannot be handled, so it does nothing
    there; nested blocks defer to the outermost."""

    _depth = 0

    def __enter__(self) -> "Uninterrupted":
        self.active = (threading.current_thread() is threading.main_thread()
                       and Uninterrupted._depth == 0)
        Uninterrupted._depth += 1
        if self.active:
            self.received: list[tuple[int, Any]] = []
            self.previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        self.received.append((signum, frame))

    def __exit__(self, *exc: object) -> None:
        Uninterrupted._depth -= 1
        if not self.active:
            return
        signal.signal(signal.SIGINT, self.previous)
        if self.received and callable(self.previous):
            self.previous(*self.received[0])  # default_int_handler raises KeyboardInterrupt


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
