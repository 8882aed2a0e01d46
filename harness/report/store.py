"""Reading one suite's stage runs back from the tracking store, never creating a store.

``harness report`` and the summary on a parent run read the same records: the stage runs of the
suite's experiment (tags, params, final metrics), the invocations that produced them, a metric's
history for the curves, and the image artifacts evaluators logged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..store_file import readable, sqlite_path
from ..tracking import TAG, local_artifacts, mlflow_client, search_all, tracking_uri

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")


@dataclass
class RunRecord:
    """One stage run as the store holds it."""

    run_id: str
    name: str
    status: str
    identity: str
    setting: str
    stage: str
    row: str
    replicate: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    artifact_uri: str
    start_time: int

    @property
    def reason(self) -> str:
        return self.tags.get(f"{TAG}error") or self.tags.get(f"{TAG}skipped") or ""


class Store:
    """Read access to one suite's experiment; ``client`` is None when there is no store yet."""

    def __init__(self, client, experiment_id: str | None, uri: str):
        self.client, self.experiment_id, self.uri = client, experiment_id, uri
        #: (run id, metric) -> its history: the convergence rule and the curve figures read the
        #: same histories, one query each to the store; a report reads a store that does not change
        self._histories: dict[tuple[str, str], list[tuple[int, float]]] = {}

    @classmethod
    def open(cls, home: Path, suite_name: str) -> "Store":
        uri = tracking_uri(home)
        db = sqlite_path(uri)
        if db is not None and not readable(db):
            return cls(None, None, uri)  # no store: do not create one just to read it
        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(suite_name)
        return cls(client, exp.experiment_id if exp is not None else None, uri)

    @classmethod
    def of_tracker(cls, tracker) -> "Store":
        return cls(tracker.client, tracker.experiment_id, tracker.uri)

    def _search(self, flt: str) -> list:
        if self.client is None or self.experiment_id is None:
            return []
        return search_all(self.client, self.experiment_id, flt)

    def stage_runs(self) -> list[RunRecord]:
        records = []
        for run in self._search(f"tags.`{TAG}identity` != ''"):
            tags = run.data.tags
            try:
                replicate = int(tags.get(f"{TAG}replicate", ""))
            except ValueError:
                continue
            records.append(RunRecord(
                run_id=run.info.run_id, name=run.info.run_name or "", status=run.info.status,
                identity=tags.get(f"{TAG}identity", ""), setting=tags.get(f"{TAG}setting", ""),
                stage=tags.get(f"{TAG}stage", ""), row=tags.get(f"{TAG}method", ""),
                replicate=replicate, metrics=dict(run.data.metrics), params=dict(run.data.params),
                tags=dict(tags), artifact_uri=run.info.artifact_uri or "",
                start_time=run.info.start_time or 0))
        return sorted(records, key=lambda r: (r.start_time, r.run_id))

    def invocations(self) -> dict[str, dict[str, str]]:
        """run id -> tags of the invocation parent runs."""
        return {run.info.run_id: dict(run.data.tags)
                for run in self._search(f"tags.`{TAG}kind` = 'invocation'")}

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        if self.client is None:
            return []
        if (run_id, key) not in self._histories:
            points = {m.step: m.value for m in sorted(self.client.get_metric_history(run_id, key),
                                                       key=lambda m: (m.step, m.timestamp))}
            self._histories[(run_id, key)] = sorted(points.items())
        return list(self._histories[(run_id, key)])

    def artifact_files(self, record: RunRecord, suffixes=IMAGE_SUFFIXES) -> list[tuple[str, Path]]:
        """(path inside the run, local file) of every artifact with one of ``suffixes``."""
        root = local_artifacts(record.artifact_uri)
        if root is not None:
            if not root.is_dir():
                return []
            return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                          if p.is_file() and p.suffix.lower() in suffixes)
        if self.client is None:
            return []
        found, todo = [], [""]
        while todo:
            folder = todo.pop()
            for info in self.client.list_artifacts(record.run_id, folder or None):
                if info.is_dir:
                    todo.append(info.path)
                elif Path(info.path).suffix.lower() in suffixes:
                    found.append(info.path)
        cache = Path(tempfile.mkdtemp(prefix="harness-report-"))
        return sorted((path, Path(self.client.download_artifacts(record.run_id, path, str(cache))))
                      for path in found)

