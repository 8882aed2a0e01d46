"""What a person sees while a suite runs.

On a terminal: a status line rewritten in place (stage run, epoch) plus one line per finished
stage run. Elsewhere (CI logs, files): only the one line per finished stage run, no carriage
returns.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stream=None, interactive: bool | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.quiet = quiet
        self.total = 0
        self.count = 0
        self.current = ""
        self.epochs = 0
        self.last_draw = 0.0

    def say(self, text: str) -> None:
        if not self.quiet:
            self._clear()
            print(text, file=self.stream, flush=True)

    def start(self, total: int) -> None:
        self.total, self.count = total, 0

    def begin(self, name: str, epochs: int) -> None:
        self.current, self.epochs = name, epochs
        self._draw(0)

    def epoch(self, epoch: int) -> None:
        now = time.monotonic()
        if self.interactive and not self.quiet and now - self.last_draw > 0.2:
            self._draw(epoch)

    def done(self, name: str, status: str, detail: str = "") -> None:
        self.count += 1
        width = len(str(self.total))
        self.say(f"[{self.count:>{width}}/{self.total}] {status:<8} {name}  {detail}".rstrip())

    def stop(self) -> None:
        self._clear()

    def _draw(self, epoch: int) -> None:
        if not (self.interactive and not self.quiet):
            return
        self.last_draw = time.monotonic()
        text = f"  running {self.current}  epoch {epoch}/{self.epochs}"
        self.stream.write("\r" + text[:119].ljust(119))
        self.stream.flush()

    def _clear(self) -> None:
        if self.interactive and not self.quiet:
            self.stream.write("\r" + " " * 119 + "\r")
            self.stream.flush()
