"""The SQLite file behind the default tracking store: created atomically, checked before use.

MLflow creates a SQLite store by running its schema migrations in place, which takes seconds; a
Ctrl-C (or a kill) during them leaves a file that every later command fails on (``duplicate
column name``, ``table ... already exists``). So a new store is migrated in a temporary file
beside the real one and linked into place only when complete, and a store found at another
schema revision is repaired when it holds nothing (it was cut off while being created) or
refused with a clear message when it holds runs.

Only the ``sqlite:///`` URIs of the default store are handled here; a server or another database
is MLflow's business.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CREATING = ".creating-"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI, None for anything else."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


@dataclass(frozen=True)
class StoreState:
    """What an existing store file holds: ``ok``, ``absent``, ``broken`` or ``foreign``."""

    kind: str
    revision: str | None = None
    head: str | None = None
    has_data: bool = False
    detail: str = ""


def _head_revision() -> str:
    """The schema revision this MLflow creates stores at (its alembic head)."""
    from mlflow.store.db.utils import _get_latest_schema_revision  # MLflow's ORM: only to check a store

    return _get_latest_schema_revision()


def _expected_tables() -> set[str]:
    from mlflow.store.db.utils import Base  # importing it registers every ORM table

    return set(Base.metadata.tables)


def inspect_store(path: Path) -> StoreState:
    """Read the file (read-only, nothing written) and say whether MLflow can use it as is."""
    if not path.exists():
        return StoreState("absent")
    if path.is_file() and path.stat().st_size == 0:
        return StoreState("broken", detail="the file is empty")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
            revision = None
            if "alembic_version" in tables:
                row = con.execute("select version_num from alembic_version").fetchone()
                revision = row[0] if row else None
            runs = con.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0
            exps = (con.execute("select count(*) from experiments").fetchone()[0]
                    if "experiments" in tables else 0)
        finally:
            con.close()
    except sqlite3.Error as exc:
        if Path(f"{path}-journal").exists():  # a transaction cut off: only a writer can roll back
            return StoreState("broken", detail=f"an interrupted transaction ({exc})")
        return StoreState("foreign", detail=f"not an SQLite database ({exc})")
    head = _head_revision()
    missing = _expected_tables() - tables
    if revision == head and not missing:
        return StoreState("ok", revision, head)
    detail = (f"schema revision {revision or 'none'}, MLflow expects {head}"
              + (f"; {len(missing)} tables missing" if missing else ""))
    return StoreState("broken", revision, head, has_data=runs > 0 or exps > 1, detail=detail)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(path: Path) -> None:
    """Remove the temporary files of creations that were cut off (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}{CREATING}*"):
        pid = tmp.name.rsplit(CREATING, 1)[1].split(".", 1)[0].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _create(path: Path, artifact_root: str) -> None:
    """Migrate a new store in a temporary file and link it into place, all or nothing: a
    second process that won the race keeps its store, and this one's is discarded."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # only to create a store

    for name in ("mlflow", "alembic"):  # schema-migration chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    tmp = path.with_name(f".{path.name}{CREATING}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    uri = f"sqlite:///{tmp}"
    try:
        store = SqlAlchemyStore(uri, artifact_root)
        store.engine.dispose()
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)  # its engine cache (MLflow 3)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another harness created it meanwhile: use theirs
    except Exception as exc:
        if _interrupted(exc):  # Ctrl-C it is: the CLI exits 130, not with SQLAlchemy's traceback
            raise KeyboardInterrupt from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}-journal").unlink(missing_ok=True)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was being handled: Ctrl-C inside
    a migration makes SQLAlchemy's clean-up of the cut-off transaction fail with an error of its
    own (PendingRollbackError), which would otherwise hide that the user pressed Ctrl-C."""
    while exc is not None:  # Python keeps a context chain free of cycles
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def refusal(path: Path, state: StoreState) -> UserError:
    """The error for a store that cannot be used and must not be touched."""
    if state.kind == "foreign":
        return UserError(f"{path} is not an MLflow store: {state.detail}", key="--home",
                         hint="move the file away, or give another folder with --home")
    return UserError(f"the tracking store {path} holds runs but its schema is not the one this "
                     f"MLflow uses ({state.detail})", key="--home",
                     hint=f"back it up, then run `mlflow db upgrade sqlite:///{path}`")


def ensure_store(path: Path, artifact_root: str) -> str | None:
    """Make ``path`` a usable store: create it atomically when absent, repair it when it was
    cut off while being created (the broken file is kept aside), refuse it when it holds runs
    at another schema. Returns a note for the user when something was repaired."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    if Path(f"{path}-journal").exists() and path.is_file():
        try:  # let SQLite roll back the transaction that was cut off
            con = sqlite3.connect(path)
            con.execute("select count(*) from sqlite_master").fetchone()
            con.close()
        except sqlite3.Error:
            pass  # inspect_store says what is wrong with it
    state = inspect_store(path)
    if state.kind == "ok":
        return None
    if state.kind == "absent":
        _create(path, artifact_root)
        return None
    if state.kind == "foreign" or state.has_data:
        raise refusal(path, state)
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    for suffix in ("-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    _create(path, artifact_root)
    return (f"the tracking store {path} was left half-created ({state.detail}; it held no runs) "
            f"and was created again; the old file is kept as {aside.name}")


def readable(path: Path) -> bool:
    """For commands that only read (``plan``, ``report``) and must not write: whether there is
    a store to read. A store cut off while being created holds nothing, so it reads as none
    (the next ``harness run`` repairs it); one that holds runs at another schema is refused."""
    state = inspect_store(path)
    if state.kind == "ok":
        return True
    if state.kind == "absent" or (state.kind == "broken" and not state.has_data):
        return False
    raise refusal(path, state)
