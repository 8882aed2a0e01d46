"""The training loop's events, for whoever must see them without changing them: the kit.

A check that patched an engine function to watch it would pass, having seen nothing, on any
path that does not go through that function. The engine instead tells the observers registered
here of each event, and a check fails when it saw none of what it watches. With no observer (a
real run) an event costs the test of an empty list.

Events, the method an observer defines to receive them, and their arguments:

- ``updates_built(updates, method)``: the optimizers of a method about to train are made.
- ``update(updates, name, terms)``: the method asked for update ``name`` with these loss terms
  (before the backward pass and the step).
- ``reference_loaded(source, method)``: an upstream stage's method was loaded for ``refs:``.
"""

from __future__ import annotations

from contextlib import contextmanager

#: the observers now registered; the engine tests it before building an event
OBSERVERS: list = []


@contextmanager
def observing(observer):
    """Register ``observer`` for the duration of the block."""
    OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        OBSERVERS.remove(observer)


def notify(event: str, *args) -> None:
    """Call ``event(*args)`` on every registered observer that defines it."""
    for observer in tuple(OBSERVERS):
        handler = getattr(observer, event, None)
        if handler is not None:
            handler(*args)
