"""What a person sees while a suite runs.

On a terminal: a live display (rich's Progress) of the whole run, with a bar, the counts of
finished, failed and remaining stage runs, the elapsed time and an ETA, and under it each stage
run in flight with its epoch, plus one line per finished stage run above it. Elsewhere (CI logs,
files): only the one line per finished stage run, no control characters.

The bar measures work, not stage runs: each stage run weighs its expected seconds (its epochs
times the epoch time the store recorded for the same data, network and method, as ``harness
plan`` estimates), so that a 40-epoch CNN run counts for more than a 3-epoch MLP one, and it
advances epoch by epoch. rich's ETA divides the work left by the recent rate of work done,
which includes the number of workers and the machine's load as they are.
"""

from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from rich.text import Text


class _Display(RichProgress):
    """The bar, and under it one line per stage run in flight."""

    def __init__(self, running: dict[str, tuple[int, int]], console: Console):
        self.running = running  # before the base class, whose live display may render already
        super().__init__(TextColumn("{task.description}"), BarColumn(),
                         TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                         TextColumn("ETA"), TimeRemainingColumn(), console=console,
                         refresh_per_second=4)

    def get_renderables(self):
        lines = [Text(f"  {name}  epoch {epoch}/{epochs}", overflow="ellipsis", no_wrap=True)
                 for name, (epoch, epochs) in list(self.running.items())]
        yield Group(self.make_tasks_table(self.tasks), *lines)


class Progress:
    def __init__(self, stream=None, interactive: bool | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.quiet = quiet
        self.total = self.count = self.failed = 0
        self.running: dict[str, tuple[int, int]] = {}  # name -> (epoch, epochs)
        self.weights: dict[str, float] = {}
        self.advanced: dict[str, float] = {}
        self.display: _Display | None = None
        self.task = None

    @property
    def live(self) -> bool:
        return self.interactive and not self.quiet

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self.display is not None:
            self.display.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, weights: dict[str, float] | None = None) -> None:
        """``weights``: each stage run's expected seconds by name (missing ones weigh 1)."""
        self.total, self.count, self.failed = total, 0, 0
        self.weights = dict(weights or {})
        if not self.live:
            return
        console = Console(file=self.stream, force_terminal=True)
        self.display = _Display(self.running, console)
        work = sum(self.weights.values()) + max(0, total - len(self.weights))
        self.task = self.display.add_task("stage runs", total=max(work, 1e-9),
                                          counts=self._counts())
        self.display.start()

    def begin(self, name: str, epochs: int) -> None:
        self.running[name] = (0, epochs)
        self.advanced[name] = 0.0

    def epoch(self, name: str, epoch: int) -> None:
        if name not in self.running:
            return
        epochs = self.running[name][1]
        self.running[name] = (epoch, epochs)
        self._advance(name, self.weights.get(name, 1.0) * min(epoch, epochs) / max(epochs, 1))

    def done(self, name: str, status: str, detail: str = "") -> None:
        self.count += 1
        self.failed += status.startswith(("FAILED", "SKIPPED"))
        self.running.pop(name, None)
        self._advance(name, self.weights.get(name, 1.0))
        self.advanced.pop(name, None)
        width = len(str(self.total))
        self.say(f"[{self.count:>{width}}/{self.total}] {status:<8} {name}  {detail}".rstrip())

    def stop(self) -> None:
        if self.display is not None:
            self.display.stop()
            self.display = None

    def _advance(self, name: str, to: float) -> None:
        """Move the bar by what ``name`` did since it last moved it."""
        step = to - self.advanced.get(name, 0.0)
        self.advanced[name] = to
        if self.display is not None and self.task is not None:
            self.display.update(self.task, advance=max(step, 0.0), counts=self._counts())

    def _counts(self) -> str:
        left = self.total - self.count
        return f"{self.count - self.failed} done, {self.failed} failed, {left} to go"
