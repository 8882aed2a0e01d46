"""A full or read-only disk recognised in each shape it reaches the CLI in, and said in one line.

The shapes are the real ones: SQLite's error raised through SQLAlchemy and MLflow, an OSError
from a plain write, a checkpoint written into a full filesystem. The CLI's end-to-end case (a
disk that fills up mid-run, then the rerun) is in tests/test_faults.py."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import sqlalchemy.exc
import torch
from mlflow.exceptions import MlflowException

from harness import storage
from harness.train.checkpoint import write_torch


def raised_through_mlflow(sqlite_message: str) -> BaseException:
    """SQLite's error as MLflow's store raises it: wrapped by SQLAlchemy, then by MLflow."""
    try:
        try:
            try:
                raise sqlite3.OperationalError(sqlite_message)
            except sqlite3.OperationalError as err:
                raise sqlalchemy.exc.OperationalError("COMMIT", {}, err) from err
        except sqlalchemy.exc.OperationalError as err:
            raise MlflowException(f"(sqlite3.OperationalError) {sqlite_message}") from err
    except MlflowException as err:
        return err


@pytest.mark.parametrize("message, state", [
    ("database or disk is full", "full"),
    ("attempt to write a readonly database", "read-only"),
])
def test_sqlite_through_mlflow_is_recognised_with_the_store_named(tmp_path, message, state):
    full = storage.recognise(raised_through_mlflow(message), tmp_path / "mlflow.db")
    assert full is not None and full.state == state and full.path == str(tmp_path / "mlflow.db")


@pytest.mark.parametrize("code, state", [(errno.ENOSPC, "full"), (errno.EROFS, "read-only"),
                                         (errno.EDQUOT, "over its quota")])
def test_an_os_error_names_its_own_file(tmp_path, code, state):
    exc = OSError(code, "no", str(tmp_path / "artifacts" / "x.json"))
    full = storage.recognise(exc, tmp_path)
    assert (full.path, full.state) == (str(tmp_path / "artifacts" / "x.json"), state)


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path):
    assert storage.recognise(raised_through_mlflow("no such table: runs"), tmp_path) is None
    assert storage.recognise(OSError(errno.EACCES, "denied"), tmp_path) is None
    assert storage.recognise(RuntimeError("a plugin's bug"), tmp_path) is None


def test_a_checkpoint_into_a_full_disk_raises_enospc_not_torchs_opaque_error(monkeypatch, tmp_path):
    """torch's zip writer says 'unexpected pos 576 vs 534' on a full disk; the harness writes
    the bytes itself, so the failure is an OSError the CLI can name."""
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            handle.write = write
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(OSError) as raised:
        write_torch(tmp_path / "state.pt", {"w": torch.zeros(3)})
    assert storage.recognise(raised.value, tmp_path).state == "full"


def test_the_line_says_what_is_full_how_much_is_free_and_how_to_continue(tmp_path):
    text = storage.StorageFull(str(tmp_path / "mlflow.db"), "full").message("harness run s.yaml")
    assert text.startswith(f"cannot write to {tmp_path / 'mlflow.db'}: its filesystem is full (")
    assert "free)" in text and "`harness run s.yaml` continues with the rest" in text


def test_a_worker_can_send_it_to_the_driver():
    import pickle

    again = pickle.loads(pickle.dumps(storage.StorageFull("/x", "read-only")))
    assert (again.path, again.state) == ("/x", "read-only")
