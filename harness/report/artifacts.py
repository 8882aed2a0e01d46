"""The images evaluators logged (information planes, regenerated inputs), copied from the store
into the report folder, and the table that shows them."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..report_folder import ReportFolder
from .collect import FINISHED, SettingData
from .format import slug, table
from .store import Store


def _kind(inner: str) -> str:
    """What an image shows: its folder (``reconstruction/epoch00800.png``) or its file stem
    (``mi_plane.png``), so the final image of each kind gets one column."""
    parts = Path(inner).parts
    return parts[0] if len(parts) > 1 else Path(inner).stem


def copy_artifacts(sd: SettingData, store: Store, out: ReportFolder) -> list[tuple[str, str, int, dict[str, str]]]:
    """Images logged by evaluators (information planes, regenerated inputs): of the lowest
    finished replicate of each (stage, row), the last image of each kind (an evaluator that ran
    every N epochs leaves one per run; the final one is what the tables describe), copied under
    ``out/artifacts``. Returns (stage, row, replicate, {kind: relative path})."""
    found = []
    for st in sd.setting.stages:
        for label in sd.row_order():
            done = sorted((p for p in sd.expected(st, label) if p.state == FINISHED),
                          key=lambda p: p.run.replicate)
            if not done:
                continue
            p = done[0]
            last: dict[str, tuple[str, Path]] = {}
            for inner, local in store.artifact_files(p.record):  # sorted: the last one wins
                last[_kind(inner)] = (inner, local)
            if not last:
                continue
            rels = {}
            for kind, (inner, local) in sorted(last.items()):
                rel = Path("artifacts", slug(sd.setting.name), slug(st), slug(label),
                           f"seed{p.run.replicate}", *[slug(x) for x in Path(inner).parts])
                shutil.copyfile(local, out.path(rel))
                rels[kind] = rel.as_posix()
            found.append((st, label, p.run.replicate, rels))
    return found


def artifact_table(arts: list[tuple[str, str, int, dict[str, str]]], width: int = 240) -> list[str]:
    kinds = sorted({k for *_, rels in arts for k in rels})
    rows = []
    for st, label, rep, rels in arts:
        rows.append([f"{st} / {label} (seed {rep})"] +
                    [f'<img src="{rels[k]}" width="{width}" alt="{st}/{label} {k}">' if k in rels
                     else "" for k in kinds])
    return table(["stage / method"] + kinds, rows)

