"""Ctrl-C during a store call is delivered after the call, never inside it.

The signal is sent by the call itself, so where it lands is certain, not a matter of timing."""

from __future__ import annotations

import os
import signal

import pytest

from harness.uninterrupted import Uninterrupted, UninterruptedClient


class Store:
    """Stands for MLflow's client: a write whose two halves must both happen."""

    def __init__(self):
        self.log: list[str] = []
        self.version = 3

    def write(self, value: str) -> str:
        self.log.append(f"begin {value}")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the transaction
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
