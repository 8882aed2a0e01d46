"""Every command of the README's tour is one that a test runs (through readme_tour.tour)."""

from __future__ import annotations

import re

from readme_tour import ROOT, tour_commands

TAKEN = re.compile(r"""\btour\(\s*["']([^"']+)["']""")


def test_every_tour_command_is_run_by_a_test():
    starts = {m for path in (ROOT / "tests").glob("test_*.py")
              for m in TAKEN.findall(path.read_text())}
    commands = tour_commands()
    assert len(commands) >= 3
    untested = [c for c in commands if not any(c.startswith(s) for s in starts)]
    assert not untested, f"tour commands no test runs: {untested}"
    unknown = [s for s in starts if not any(c.startswith(s) for c in commands)]
    assert not unknown, f"tests take commands the tour no longer has: {unknown}"
