"""An empty MLflow store, already migrated, to copy into a test's home.

Creating a SQLite store runs MLflow's schema migrations: several seconds per home on a loaded
two-core machine, which tests that make a home each would pay again and again. A copy of one
migrated file is the same store, made in milliseconds.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def seed_store(home: Path) -> Path:
    """Put an empty store into ``home`` (created if needed); returns ``home``."""
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="harness-store-"))
        atexit.register(shutil.rmtree, folder, True)
        MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _template = folder / "mlflow.db"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template, home / "mlflow.db")
    return home
