"""Errors meant for people: one line naming where the problem is and what to do about it.

The CLI turns a ``UserError`` into that line and exit code 2, without a traceback; anything else
is a bug (or a failed stage run, which the engine records instead of raising).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a suite, a plugin, an option or a data root. Exit code 2."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 hint: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def located(self, *, file: str | None = None, key: str | None = None) -> "UserError":
        """The same error with a file and/or key filled in where it had none."""
        return UserError(self.message, file=self.file or file, key=self.key or key, hint=self.hint)

    def under(self, parent: str, *, file: str | None = None, own: tuple = ()) -> "UserError":
        """The same error re-located under the suite key it came from: a plugin names its own
        option (``layers``), the suite reader knows where that plugin was declared
        (``grid.method[1]``). A key in ``own`` (or none) names the parent itself."""
        key = parent if self.key is None or self.key in own else f"{parent}.{self.key}"
        return UserError(self.message, file=file or self.file, key=key, hint=self.hint)


def suggest(name: str, known: Iterable[str]) -> str | None:
    """'did you mean ...?' for the nearest known names, or a list of the known ones."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if known:
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        return f"known: {shown}"
    return None


def check_choice(value, key: str, choices: Iterable[str], hint: str | None = None):
    """A plugin option that must be one of ``choices``: returned, or refused as bad input with
    the option named (the suite's file and key path are added where the option was read)."""
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"unknown {key} {value!r}", key=key, hint=hint or " or ".join(choices))
    return value


def check_non_negative(value, key: str, hint: str | None = None) -> float:
    """A plugin option that must be a number >= 0 (YAML's booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(f"{key} must be a non-negative number, got {value!r}", key=key, hint=hint)
    return float(value)
