"""The commands of the README's tour, for the tests that run them.

Each test that runs a step of the tour takes its command from here, by the words it starts
with, rather than writing it again: a command edited in the README is then the command tested,
and tests/test_readme_tour.py checks that every command of the tour is taken by some test.
"""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## A tour"


def tour_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The shell lines of the tour's ```bash blocks, without the ``.venv/bin/`` prefix."""
    text = readme.read_text()
    if HEADING not in text:
        raise LookupError(f"{readme} has no section {HEADING!r}")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines, inside = [], False
    for line in section.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
        elif inside and line.strip():
            lines.append(line.split("#", 1)[0].strip().removeprefix(".venv/bin/"))
    return lines


def tour(start: str) -> list[str]:
    """The arguments after ``harness`` of the one tour command that begins with ``start``,
    paths of this checkout made absolute, so the test may run it in a folder of its own."""
    found = [c for c in tour_commands() if c.startswith(start)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} commands of the README's tour start with {start!r}")
    words = shlex.split(found[0])
    if words[0] != "harness":
        raise LookupError(f"the tour command {found[0]!r} is not a harness command")
    return [str(ROOT / w) if "/" in w and (ROOT / w).exists() else w for w in words[1:]]
