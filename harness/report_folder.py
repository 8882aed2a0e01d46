"""The output folder of ``harness report``: every file stays inside it, a new report replaces
what the previous one wrote there (and only that), and a report committed to git is not
overwritten without ``--force``.

What a report wrote is listed in ``MANIFEST`` inside the folder, so that the next report can
remove exactly those files: stale figures of a setting that was renamed do not linger beside
the new ones, and files a person put there are never touched. A folder written before the
manifest existed is recognised by the files every report wrote (README.md, claims.json,
figures/, artifacts/).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .errors import UserError

MANIFEST = ".harness-report.json"
#: what reports wrote before the manifest existed
LEGACY = ("README.md", "claims.json", "figures", "artifacts")


def _tracked(folder: Path) -> list[str]:
    """Files under ``folder`` that git tracks (none when it is not in a git work tree)."""
    if not folder.is_dir():
        return []
    try:
        done = subprocess.run(["git", "ls-files", "--", "."], cwd=folder, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.split() if done.returncode == 0 else []


class ReportFolder:
    """Hands out paths inside one folder and remembers them for the manifest."""

    def __init__(self, root: Path, *, force: bool = False):
        self.root = root.resolve()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{root} is a file, not a folder", key="--out",
                            hint="give a folder for the report with --out")
        tracked = _tracked(self.root)
        if tracked and not force:
            raise UserError(f"{root} holds a report committed to git ({len(tracked)} tracked files)",
                            key="--out", hint="add --force to replace it (git diff then shows what "
                                              "changed), or write elsewhere with --out DIR")
        self.written: list[str] = []

    def previous(self) -> list[Path]:
        """The files the previous report wrote here."""
        manifest = self.root / MANIFEST
        if manifest.is_file():
            try:
                names = json.loads(manifest.read_text()).get("files", [])
            except (ValueError, AttributeError):
                names = []
            files = [self.root / n for n in names if isinstance(n, str)]
        else:
            files = [p for name in LEGACY for p in
                     ([self.root / name] if (self.root / name).is_file()
                      else sorted((self.root / name).rglob("*")))]
        return [f for f in files if self.inside(f) and f.is_file()] + [manifest]

    def inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            return False
        return path.resolve() != self.root

    def clear(self) -> None:
        """Remove the previous report's files, then the folders that this left empty."""
        folders = set()
        for f in self.previous():
            if f.is_file():
                folders.update(p for p in f.parents if self.inside(p))
                f.unlink()
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def path(self, rel: str | Path) -> Path:
        """``root/rel``, refused if it would leave the folder; its parent folder is created."""
        target = self.root / rel
        if not self.inside(target):
            raise UserError(f"a report file {str(rel)!r} would land outside {self.root}",
                            key="--out", hint="names in a suite must be plain file names")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(target.relative_to(self.root).as_posix())
        return target

    def finish(self) -> None:
        """Write the manifest of the files that exist now; drop folders made for files that
        were not written after all (a figure with nothing to plot)."""
        files = sorted({n for n in self.written if (self.root / n).is_file()})
        made = {p for n in self.written for p in (self.root / n).parents if self.inside(p)}
        for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        (self.root / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")
