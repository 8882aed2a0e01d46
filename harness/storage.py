"""A full or read-only disk: one message and exit 3, never a traceback, nothing finished lost.

When the disk under the store, the artifacts or the resume folder fills up (or is remounted
read-only), the failure surfaces in many shapes: ``OSError(ENOSPC)`` from a copy, a
``RuntimeError`` from torch's zip writer, and SQLite's ``database or disk is full`` wrapped by
SQLAlchemy and again by MLflow. Each stage run that follows would fail the same way, so the
invocation stops at the first one with :class:`StorageFull`, whose message names the folder,
the space left on its filesystem and that a rerun after making room continues: the store's
transactions are atomic, so what finished stays finished and the rerun trains the rest.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

EXIT_STORAGE = 3
#: errno values that mean "the disk will not take it", whoever raised them
_ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "over its quota", errno.EROFS: "read-only"}
#: how SQLite (through SQLAlchemy and MLflow) and torch's writer say the same
_TEXTS = {"database or disk is full": "full", "readonly database": "read-only",
          "read-only file system": "read-only", "no space left on device": "full"}


class StorageFull(Exception):
    """The invocation cannot write its records. Carries plain strings, so a worker process
    can send it to the driver as it is."""

    def __init__(self, path: str, state: str):
        super().__init__(path, state)
        self.path, self.state = path, state

    def message(self, rerun: str) -> str:
        free = free_space(Path(self.path))
        return (f"cannot write to {self.path}: its filesystem is {self.state}"
                f"{f' ({free} free)' if free else ''}. What finished is kept: make room (or "
                f"give another --home), then `{rerun}` continues with the rest")

    def __str__(self) -> str:
        return f"cannot write to {self.path}: its filesystem is {self.state}"


def free_space(path: Path) -> str | None:
    """The free space on the filesystem that holds ``path`` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                return None
            return f"{free / 2**20:.1f} MiB" if free >= 2**20 else f"{free / 1024:.0f} KiB"
    return None


def _state(exc: BaseException) -> tuple[str, str | None] | None:
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        return _ERRNOS[exc.errno], exc.filename
    text = str(exc).lower()
    for needle, state in _TEXTS.items():
        if needle in text:
            return state, None
    return None


def recognise(exc: BaseException, where: Path | str) -> StorageFull | None:
    """``exc`` as a :class:`StorageFull` if it (or anything it was raised from) says that the
    disk will not take a write; ``where``: the folder to name when the error names no file."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StorageFull):
            return exc
        seen.add(id(exc))
        found = _state(exc)
        if found is not None:
            state, filename = found
            return StorageFull(str(filename or where), state)
        exc = exc.__cause__ or exc.__context__
    return None
