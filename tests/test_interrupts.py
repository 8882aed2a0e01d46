"""Ctrl-C and SIGTERM: held back during a store call and delivered after it; SIGTERM handled
as Ctrl-C is, within a bounded grace period.

Each signal is sent by the code under test itself, so where it lands is certain, not a matter
of timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_env
from harness.interrupts import (EXIT_TERMINATED, Terminated, Uninterrupted, UninterruptedClient,
                                sigterm_as_interrupt)


class Store:
    """Stands for MLflow's client: a write whose two halves must both happen."""

    def __init__(self, signum: int = signal.SIGINT):
        self.log: list[str] = []
        self.version = 3
        self.signum = signum

    def write(self, value: str) -> str:
        self.log.append(f"begin {value}")
        os.kill(os.getpid(), self.signum)  # Ctrl-C in the middle of the transaction
        for _ in range(1000):  # bytecodes at which Python would deliver the signal
            pass
        self.log.append(f"commit {value}")
        return value


def test_ctrl_c_inside_a_call_is_raised_after_it_completes():
    client = UninterruptedClient(Store())
    with pytest.raises(KeyboardInterrupt):
        client.write("a")
    assert client.log == ["begin a", "commit a"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_handler_in_place_before_decides_what_a_held_signal_does():
    """The runner's bookkeeping after Ctrl-C ignores a second one: it stays ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        client = UninterruptedClient(Store())
        assert client.write("b") == "b"
        assert client.log == ["begin b", "commit b"]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_nested_blocks_deliver_once_at_the_outermost():
    store = Store()
    with pytest.raises(KeyboardInterrupt):
        with Uninterrupted():
            with Uninterrupted():
                store.write("c")
            store.log.append("after inner")
    assert store.log == ["begin c", "commit c", "after inner"]


def test_attributes_that_are_not_methods_pass_through():
    assert UninterruptedClient(Store()).version == 3


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=subprocess_env())


def test_sigterm_becomes_terminated_and_is_held_during_a_store_call():
    before = signal.getsignal(signal.SIGTERM)
    client = UninterruptedClient(Store(signal.SIGTERM))
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        client.write("d")
    assert client.log == ["begin d", "commit d"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_second_sigterm_during_the_bookkeeping_exits_at_once_with_143():
    done = _python("""
        import os, signal, time
        from harness.interrupts import Terminated, bounded_bookkeeping
        with bounded_bookkeeping(Terminated()):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(50)
        print("the bookkeeping ran to its end")
    """)
    assert done.returncode == EXIT_TERMINATED and "ran to its end" not in done.stdout


def test_bookkeeping_after_sigterm_that_outlasts_the_grace_period_exits_with_143():
    done = _python("""
        import time
        from harness import interrupts
        interrupts.GRACE_SECONDS = 0.2
        with interrupts.bounded_bookkeeping(interrupts.Terminated()):
            time.sleep(50)
        print("the bookkeeping ran to its end")
    """)
    assert done.returncode == EXIT_TERMINATED and "ran to its end" not in done.stdout


def test_a_second_ctrl_c_during_the_bookkeeping_is_ignored():
    done = _python("""
        import os, signal
        from harness.interrupts import bounded_bookkeeping
        with bounded_bookkeeping(KeyboardInterrupt()):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10000):
                pass
        print("the bookkeeping ran to its end")
    """)
    assert done.returncode == 0 and "ran to its end" in done.stdout
