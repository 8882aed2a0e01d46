"""``harness report``: the runs of a suite, read back from MLflow, as the tables a paper prints.

Which runs count: exactly those ``harness run`` would skip, i.e. the finished stage runs whose
identity matches the suite as loaded now (profile, resolved config, plugin versions, data
fingerprint). Runs of another profile or of older code stay in the store but are left out and
counted, so a table never mixes a smoke run into a default one. For each planned stage run the
report says whether it finished, failed (with the reason), was skipped, is still running or is
missing, so an empty or half-done store gives a report of what is missing rather than an error.

Statistics are those of ``harness.stats`` (sample std, percentile bootstrap with a fixed seed,
one-sided t-tests); claims are those of ``harness.claims``. The same tables go to the parent run
of every ``harness run`` invocation (``log_summary``) so the MLflow UI alone tells the story.

Output is deterministic: the same store gives the same README (but for its one timestamp line),
the same figures and the same copied artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .claims import (Claim, Reference, Verdict, check_setting, evaluate, parse_reference,
                     side_values, stage_rows)
from .report_budget import PAPER_PROFILE, budget_rows, paper_epochs, paper_runs, profile_lines
from .report_folder import ReportFolder
from .report_spec import Sweep
from .stats import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Summary, describe, paired_t
from .suite import Setting, StageRun, Suite
from .store_file import readable, sqlite_path
from .tracking import TAG, search_all, tracking_uri

MAIN_METRIC = "final_test_acc"
CURVE_METRIC = "test_acc"
COST_METRICS = (("final_seconds_per_epoch", "s/epoch"), ("final_train_samples_per_s", "samples/s"),
                ("final_rss_increase_mb", "RSS increase MB"), ("final_peak_rss_mb", "peak RSS MB"),
                ("final_peak_cuda_mb", "peak CUDA MB"))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
TIMESTAMP_PREFIX = "_Generated at "
DASH = "–"


# ------------------------------------------------------------------------------------------------
# Reading the store (never creating one)
# ------------------------------------------------------------------------------------------------
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

    @classmethod
    def open(cls, home: Path, suite_name: str) -> "Store":
        uri = tracking_uri(home)
        db = sqlite_path(uri)
        if db is not None and not readable(db):
            return cls(None, None, uri)  # no store: do not create one just to read it
        import logging

        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=uri)
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
        points = {m.step: m.value for m in sorted(self.client.get_metric_history(run_id, key),
                                                   key=lambda m: (m.step, m.timestamp))}
        return sorted(points.items())

    def artifact_files(self, record: RunRecord, suffixes=IMAGE_SUFFIXES) -> list[tuple[str, Path]]:
        """(path inside the run, local file) of every artifact with one of ``suffixes``."""
        uri = record.artifact_uri
        if uri.startswith("file://") or uri.startswith("/"):
            from urllib.parse import unquote, urlparse

            root = Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
            if not root.is_dir():
                return []
            return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                          if p.is_file() and p.suffix.lower() in suffixes)
        if self.client is None:
            return []
        import tempfile

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


# ------------------------------------------------------------------------------------------------
# Matching the plan with the store
# ------------------------------------------------------------------------------------------------
FINISHED, FAILED, SKIPPED, RUNNING, KILLED, MISSING = (
    "finished", "failed", "skipped", "running", "killed", "missing")


@dataclass
class Planned:
    run: StageRun
    identity: str
    state: str
    record: RunRecord | None = None
    reason: str = ""


@dataclass
class SettingData:
    setting: Setting
    rows: dict[str, list[str]]  # stage -> row labels
    planned: list[Planned]
    claims: list[Claim]
    references: list[Reference]
    verdicts: list[Verdict] = field(default_factory=list)

    def finished(self) -> list[RunRecord]:
        return [p.record for p in self.planned if p.state == FINISHED]

    def values(self, stage: str, row: str, metric: str = MAIN_METRIC) -> dict[int, float]:
        """replicate -> the metric of the finished run of (stage, row)."""
        out = {}
        for p in self.planned:
            if p.state == FINISHED and p.run.stage == stage and p.run.row == row:
                v = p.record.metrics.get(metric)
                if v is not None and math.isfinite(v):
                    out[p.run.replicate] = float(v)
        return dict(sorted(out.items()))

    def expected(self, stage: str, row: str) -> list[Planned]:
        return [p for p in self.planned if p.run.stage == stage and p.run.row == row]

    def row_order(self) -> list[str]:
        order: list[str] = []
        for ref in self.setting.grid.get("method", []):
            if ref.label not in order:
                order.append(ref.label)
        for labels in self.rows.values():
            for label in labels:
                if label not in order:
                    order.append(label)
        return order


@dataclass
class ReportData:
    suite: Suite
    store_uri: str
    settings: list[SettingData]
    stale: int  # finished stage runs of this suite's experiment that match no planned identity
    invocations: dict[str, dict[str, str]]

    @property
    def verdicts(self) -> list[Verdict]:
        return [v for s in self.settings for v in s.verdicts]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for s in self.settings:
            for p in s.planned:
                out[p.state] += 1
        return dict(out)


def collect(suite: Suite, runs: list[StageRun], identities: dict[tuple, str], store: Store) -> ReportData:
    """Pair every planned stage run with what the store holds for its identity."""
    records = store.stage_runs()
    by_identity: dict[str, list[RunRecord]] = defaultdict(list)
    for rec in records:
        by_identity[rec.identity].append(rec)
    planned_ids = set(identities.values())
    settings = []
    for setting in suite.settings:
        claims = check_setting(setting, file=suite.path)
        rows = stage_rows(setting)
        refs = parse_reference(setting.reference, rows, file=suite.path)
        planned = []
        for run in runs:
            if run.setting != setting.name:
                continue
            ident = identities[run.key]
            planned.append(_match(run, ident, by_identity.get(ident, [])))
        data = SettingData(setting, rows, planned, claims, refs)
        data.verdicts = [evaluate(c, side_values(c.left, data.values, c.metric),
                                  side_values(c.right, data.values, c.metric),
                                  setting=setting.name) for c in claims]
        settings.append(data)
    stale = len({r.identity for r in records if r.status == "FINISHED" and r.identity not in planned_ids})
    return ReportData(suite, store.uri, settings, stale, store.invocations())


def _match(run: StageRun, ident: str, records: list[RunRecord]) -> Planned:
    done = [r for r in records if r.status == "FINISHED"]
    if done:
        return Planned(run, ident, FINISHED, done[-1])
    if not records:
        return Planned(run, ident, MISSING)
    last = records[-1]
    if last.status == "RUNNING":
        return Planned(run, ident, RUNNING, last)
    if last.status == "FAILED":
        return Planned(run, ident, FAILED, last, last.reason)
    if last.tags.get(f"{TAG}skipped"):
        return Planned(run, ident, SKIPPED, last, last.reason)
    return Planned(run, ident, KILLED, last, last.reason or "interrupted")


# ------------------------------------------------------------------------------------------------
# Formatting helpers
# ------------------------------------------------------------------------------------------------
def _fin(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if _fin(x) else DASH


def _cell(s: Summary, expected: int, fmt: str = ".3f") -> str:
    if s.n == 0:
        return f"missing (0/{expected})" if expected else ""
    n = f"{s.n}" if s.n == expected else f"{s.n} of {expected}"
    if s.n == 1:
        return f"{_num(s.mean, fmt)} ({n})"
    return f"{_num(s.mean, fmt)} ± {_num(s.std, fmt)} ({n})"


def _ci(s: Summary, fmt: str = ".3f") -> str:
    return f"[{_num(s.ci_low, fmt)}, {_num(s.ci_high, fmt)}]" if _fin(s.ci_low) else DASH


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return out + [""]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _p(p: float) -> str:
    if not _fin(p):
        return DASH
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _metric_title(metric: str) -> str:
    return metric.removeprefix("final_").replace("_", " ")


# ------------------------------------------------------------------------------------------------
# Tables (markdown lines)
# ------------------------------------------------------------------------------------------------
def claims_table(data: ReportData) -> list[str]:
    if not data.verdicts:
        return ["The suite states no claims.", ""]
    multi = len(data.settings) > 1
    header = (["#"] + (["setting"] if multi else []) +
              ["claim", "metric", "verdict", "test", "n", "left", "right", "d", "95% CI of d",
               "one-sided 95% bound", "p", "effect"])
    rows, notes = [], []
    for i, v in enumerate(data.verdicts, 1):
        t = v.test
        base = [str(i)] + ([v.setting] if multi else []) + [f"`{v.claim.text}`",
                                                             _metric_title(v.claim.metric),
                                                             f"**{v.verdict}**"]
        if t is None:
            rows.append(base + [DASH] * 9)
        else:
            n = str(t.n_left) if t.kind == "paired" else f"{t.n_left}/{t.n_right}"
            bound = t.bound(1 - ALPHA, "lower")
            rows.append(base + [
                "paired t" if t.kind == "paired" else "Welch t", n, f"{t.mean_left:.4g}",
                f"{t.mean_right:.4g}", f"{t.diff:+.4g}",
                f"[{_num(v.diff_ci[0], '+.4g')}, {_num(v.diff_ci[1], '+.4g')}]",
                f"{_num(bound, '+.4g')} vs {v.threshold:+.4g}", _p(t.p),
                f"{t.effect_name} = {_num(t.effect, '.3g')}"])
        notes.append(f"{i}. {v.reason}.")
    return _table(header, rows) + notes + [""]


def _stage_table(sd: SettingData, metric: str, cell) -> list[str]:
    """A row per method, a column per stage; ``cell(summary over seeds, expected runs)``."""
    stages = list(sd.setting.stages)
    rows = []
    for label in sd.row_order():
        cells = [label]
        for st in stages:
            exp = len(sd.expected(st, label))
            cells.append(cell(describe(list(sd.values(st, label, metric).values())), exp)
                         if exp else "")
        rows.append(cells)
    return _table(["method"] + stages, rows)


def main_table(sd: SettingData, metric: str = MAIN_METRIC) -> list[str]:
    return _stage_table(sd, metric, _cell)


def metric_tables(sd: SettingData) -> list[str]:
    """The metrics the suite's ``report.metrics`` lists, mean ± std (n) over seeds: one table
    with a column per metric where the setting has one stage (a paper's per-variant table),
    else one table per metric with a column per stage."""
    metrics = sd.setting.report.metrics
    if not metrics:
        return []
    logged = [m for m in metrics if any(m in r.metrics for r in sd.finished())]
    silent = [f"`{m}`" for m in metrics if m not in logged]
    note = ([f"No finished run logged {', '.join(silent)}.", ""] if silent else [])
    stages = list(sd.setting.stages)
    if len(stages) > 1:
        out = []
        for metric in logged:
            out += [f"### Final {_metric_title(metric)}: mean ± std (n)", ""] + main_table(sd, metric)
        return out + note
    stage = stages[0]
    rows = []
    for label in sd.row_order():
        exp = len(sd.expected(stage, label))
        if exp:
            rows.append([label] + [_cell(describe(list(sd.values(stage, label, m).values())), exp)
                                   for m in logged])
    title = ", ".join(_metric_title(m) for m in logged)
    out = [f"### {title}: mean ± std (n)", ""] + _table(["method"] + [_metric_title(m) for m in logged],
                                                          rows) if logged else []
    return out + note


def _sweep_points(sd: SettingData, sweep: Sweep, y: str) -> dict[str, list[tuple[float, list[float]]]]:
    """line -> [(x, y of each seed)], x being the mean over seeds of the row's x metric."""
    out: dict[str, list[tuple[float, list[float]]]] = {}
    for line, labels in sweep.lines:
        points = []
        for label in labels:
            xs = list(sd.values(sweep.stage, label, sweep.x).values())
            ys = list(sd.values(sweep.stage, label, y).values())
            if xs and ys:
                points.append((sum(xs) / len(xs), ys))
        out[line] = sorted(points, key=lambda p: p[0])
    return out


def sweep_tables(sd: SettingData, sweep: Sweep) -> list[str]:
    """For each y: a row per line, a column per value of x, cells mean ± std (n) over seeds."""
    out = []
    for y in sweep.y:
        points = _sweep_points(sd, sweep, y)
        xs = sorted({x for pts in points.values() for x, _ in pts})
        out += [f"{_metric_title(y)} against {_metric_title(sweep.x)} (stage {sweep.stage}):", ""]
        if not xs:
            out += ["No finished run of these rows logged both metrics.", ""]
            continue
        rows = []
        for line, pts in points.items():
            by_x = {x: ys for x, ys in pts}
            rows.append([line] + [_cell(describe(by_x[x]), len(by_x[x]), ".3f") if x in by_x else ""
                                  for x in xs])
        out += _table(["line"] + [f"{_metric_title(sweep.x)} {x:g}" for x in xs], rows)
    return out


def ci_table(sd: SettingData, metric: str = MAIN_METRIC) -> list[str]:
    return _stage_table(sd, metric, lambda summary, expected: _ci(summary))


def per_seed_tables(sd: SettingData, metric: str = MAIN_METRIC) -> list[str]:
    out = []
    for st in sd.setting.stages:
        labels = [r for r in sd.row_order() if sd.expected(st, r)]
        replicates = sorted({p.run.replicate for r in labels for p in sd.expected(st, r)})
        rows = []
        for rep in replicates:
            cells = [f"seed {rep}"]
            for label in labels:
                p = next((p for p in sd.expected(st, label) if p.run.replicate == rep), None)
                if p is None:
                    cells.append("")
                elif p.state == FINISHED:
                    cells.append(_num(p.record.metrics.get(metric)))
                else:
                    cells.append(p.state)
            rows.append(cells)
        sums = [describe(list(sd.values(st, label, metric).values())) for label in labels]
        rows.append(["Avg."] + [_num(s.mean) for s in sums])
        rows.append(["Std. Dev."] + [_num(s.std) for s in sums])
        out += [f"Stage {st}:", ""] + _table(["training run"] + [f"{r}_{st}" for r in labels], rows)
    return out


def reference_table(sd: SettingData) -> list[str]:
    if not sd.references:
        return []
    rows = []
    stages, labels = list(sd.setting.stages), sd.row_order()
    for ref in sorted(sd.references, key=lambda r: (stages.index(r.stage), labels.index(r.label))):
        s = describe(list(sd.values(ref.stage, ref.label, ref.metric).values()))
        paper = _num(ref.mean) + (f" ± {_num(ref.std)}" if _fin(ref.std) else "")
        paper += f" ({ref.n})" if ref.n else ""
        inside = DASH
        if _fin(s.ci_low):
            inside = "yes" if s.ci_low <= ref.mean <= s.ci_high else "no"
        rows.append([ref.stage, ref.label, _metric_title(ref.metric), paper, ref.source or DASH,
                     _cell(s, len(sd.expected(ref.stage, ref.label))), _ci(s),
                     _num(s.mean - ref.mean, "+.3f") if s.n else DASH, inside])
    return _table(["stage", "method", "metric", "paper", "source", "measured", "measured 95% CI",
                   "measured − paper", "paper inside CI"], rows)


def transfer_pairs(sd: SettingData) -> list[tuple[str, str, str]]:
    """(stage, baseline stage, baseline row): a stage that starts from an upstream stage and a
    from-scratch stage trained on the same dataset, not depending on the method, with one row."""
    from .suite import stage_axes

    stages = sd.setting.stages
    deps = stage_axes(stages, sd.setting.grid)
    pairs = []
    for name, st in stages.items():
        if st.from_stage is None or st.dataset is None:
            continue
        for bname, b in stages.items():
            if (bname != name and b.from_stage is None and not b.refs and b.dataset is not None
                    and "method" not in deps[bname] and len(sd.rows[bname]) == 1
                    and b.dataset.label == st.dataset.label):
                pairs.append((name, bname, sd.rows[bname][0]))
                break
    return pairs


def gain_table(sd: SettingData, metric: str = MAIN_METRIC) -> list[str]:
    refs = {(r.stage, r.label): r.mean for r in sd.references if r.metric == metric}
    rows = []
    for stage, base, base_row in transfer_pairs(sd):
        base_values = sd.values(base, base_row, metric)
        for label in sd.rows[stage]:
            vals = sd.values(stage, label, metric)
            shared = sorted(set(vals) & set(base_values))
            gains = [vals[k] - base_values[k] for k in shared]
            s = describe(gains)
            p = DASH
            if len(gains) >= 2:
                p = _p(paired_t([vals[k] for k in shared], [base_values[k] for k in shared]).p)
            ref = DASH
            if (stage, label) in refs and (base, base_row) in refs:
                ref = f"{refs[(stage, label)] - refs[(base, base_row)]:+.3f}"
            rows.append([label, f"{stage} − {base}.{base_row}",
                         (f"{s.mean:+.3f} ± {_num(s.std)} ({s.n})" if s.n > 1 else
                          f"{s.mean:+.3f} (1)" if s.n == 1 else "no pairs"),
                         _ci(s, "+.3f"), p, ref])
    if not rows:
        return []
    return _table(["method", "gain", "mean ± std (pairs)", "95% CI", "p (gain > 0)", "paper"], rows)


def _std_row(sd: SettingData, stage: str) -> str | None:
    names = {ref.label: ref.name for ref in sd.setting.grid.get("method", [])}
    for st in sd.setting.stages.values():
        if st.method is not None:
            names.setdefault(st.method.label, st.method.name)
    return next((r for r in sd.rows[stage] if names.get(r) == "std"), None)


def cost_table(sd: SettingData) -> list[str]:
    present = [(k, title) for k, title in COST_METRICS
               if any(k in r.metrics for r in sd.finished())]
    if not present:
        return []
    header = ["stage", "method", "device, threads"]
    for _, title in present:
        header += [title, "× std"]
    rows = []
    for st in sd.setting.stages:
        std_label = _std_row(sd, st)
        for label in [r for r in sd.row_order() if sd.expected(st, r)]:
            recs = [p.record for p in sd.expected(st, label) if p.state == FINISHED]
            if not recs:
                continue
            env = sorted({f"{r.params.get('measured.device', '?')}, "
                          f"{r.params.get('measured.threads', '?')}" for r in recs})
            cells = [st, label, "; ".join(env)]
            for key, _ in present:
                s = describe(list(sd.values(st, label, key).values()))
                base = describe(list(sd.values(st, std_label, key).values())) if std_label else None
                cells.append(_cell(s, len(recs), ".4g") if s.n else DASH)
                ratio = (s.mean / base.mean if base is not None and base.n and s.n and base.mean
                         else math.nan)
                cells.append(_num(ratio, ".2f"))
            rows.append(cells)
    return _table(header, rows)


def missing_lines(sd: SettingData) -> list[str]:
    lines = []
    for p in sd.planned:
        if p.state != FINISHED:
            why = f": {p.reason.splitlines()[0][:300]}" if p.reason else ""
            lines.append(f"- `{p.run.name}` ({p.identity}): {p.state}{why}")
    return lines


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "harness"
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take, to clip a mean ± std band to: accuracies in [0, 1],
    correlations in [-1, 1], anything else unbounded."""
    name = metric.removeprefix("final_")
    if name.endswith("acc") or name.endswith("_accuracy"):
        return 0.0, 1.0
    if name.endswith("corr"):
        return -1.0, 1.0
    return -math.inf, math.inf


def _curve_panels(sd: SettingData, store: Store, metric: str) -> list:
    """(stage, [(label, steps, mean, std) per row]) for every stage with a history."""
    import numpy as np

    panels = []
    for st in sd.setting.stages:
        lines = []
        for label in [r for r in sd.row_order() if sd.expected(st, r)]:
            per_step: dict[int, list[float]] = defaultdict(list)
            for p in sd.expected(st, label):
                if p.state == FINISHED:
                    for step, value in store.history(p.record.run_id, metric):
                        if math.isfinite(value):
                            per_step[step].append(value)
            if per_step:
                steps = sorted(per_step)
                lines.append((label, np.array(steps),
                              np.array([np.mean(per_step[s]) for s in steps]),
                              np.array([np.std(per_step[s], ddof=1) if len(per_step[s]) > 1 else 0.0
                                        for s in steps])))
        if lines:
            panels.append((st, lines))
    return panels


def curves_figure(sd: SettingData, store: Store, path: Path, metric: str = CURVE_METRIC,
                  paper_epochs: dict[str, int] | None = None) -> bool:
    """Mean over seeds of ``metric`` per epoch, one panel per stage, band = ±1 sample std
    clipped to the metric's range; the paper's value (★) at the paper's epoch count, drawn only
    where that count is known (``paper_epochs``): at the last measured epoch of a shortened
    profile it would compare budgets that differ."""
    import numpy as np

    panels = _curve_panels(sd, store, metric)
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False,
                             sharey=True)
    colors = {label: f"C{i}" for i, label in enumerate(sd.row_order())}
    paper_epochs = paper_epochs or {}
    refs = {(r.stage, r.label): r.mean for r in sd.references
            if r.metric == "final_" + metric and r.stage in paper_epochs}
    for ax, (st, lines) in zip(axes.flat, panels):
        for label, steps, mu, sdev in lines:
            ax.plot(steps, mu, color=colors[label], label=label, lw=1.5,
                    marker="o" if len(steps) <= 30 else None, ms=3)
            lo, hi = metric_range(metric)
            ax.fill_between(steps, np.clip(mu - sdev, lo, hi), np.clip(mu + sdev, lo, hi),
                            color=colors[label], alpha=0.2, lw=0)
            if (st, label) in refs and st in paper_epochs:
                ax.plot([paper_epochs[st]], [refs[(st, label)]], marker="*", ms=11,
                        color=colors[label], mec="black", mew=0.6, ls="none")
        ax.set_title(f"stage {st}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(metric.replace("_", " "))
    fig.suptitle(f"{sd.setting.name}: {metric.replace('_', ' ')}, mean over seeds, band ±1 std"
                 + (" (★ paper, at the paper's epoch count)" if refs else ""), fontsize=10)
    shown = [label for label in sd.row_order() if any(label == ln[0] for _, ls in panels for ln in ls)]
    handles = [plt.Line2D([], [], color=colors[label], lw=1.5) for label in shown]
    fig.legend(handles, shown, loc="lower center", ncol=len(shown), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if nrows == 1 else 0.04, 1, 1))
    _save(fig, path)
    return True


def final_figure(sd: SettingData, path: Path, metric: str = MAIN_METRIC) -> bool:
    """Final metric per stage and method: each seed, the mean with its 95% bootstrap CI, and the
    paper's value where the suite gives one."""
    plt = _pyplot()
    labels = sd.row_order()
    stages = list(sd.setting.stages)
    refs = {(r.stage, r.label): r.mean for r in sd.references if r.metric == metric}
    any_point = False
    fig, ax = plt.subplots(figsize=(2.4 + 1.5 * len(stages), 3.6))
    labelled: set[str] = set()
    for j, st in enumerate(stages):
        present = [label for label in labels if sd.expected(st, label)]
        width = 0.8 / max(1, len(present))
        for k, label in enumerate(present):
            i = labels.index(label)
            x = j - 0.4 + width * (k + 0.5)
            vals = list(sd.values(st, label, metric).values())
            if vals:
                any_point = True
                s = describe(vals)
                ax.scatter([x - 0.12 * width] * len(vals), vals, s=16, color=f"C{i}", alpha=0.6,
                           lw=0, zorder=3)
                err = None
                if _fin(s.ci_low):
                    err = [[s.mean - s.ci_low], [s.ci_high - s.mean]]
                ax.errorbar([x + 0.12 * width], [s.mean], yerr=err, fmt="o", color=f"C{i}", ms=5,
                            capsize=3, label=None if label in labelled else label)
                labelled.add(label)
            if (st, label) in refs:
                ax.plot([x + 0.12 * width], [refs[(st, label)]], marker="*", ms=10, color=f"C{i}",
                        mec="black", mew=0.6, ls="none", zorder=4)
    if not any_point:  # paper values alone are in the tables; a figure needs measurements
        plt.close(fig)
        return False
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlim(-0.5, len(stages) - 0.5)
    ax.set_ylabel(_metric_title(metric))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(f"{sd.setting.name}: mean with 95% bootstrap CI, dots = seeds"
                 + (", ★ = paper" if refs else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def sweep_figure(sd: SettingData, sweep: Sweep, path: Path) -> bool:
    """One panel per y: the mean over seeds against x for each line, ±1 std bars, seeds as dots."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sweep.y), figsize=(4.2 * len(sweep.y), 3.4), squeeze=False)
    any_point = False
    for ax, y in zip(axes[0], sweep.y):
        ticks: set[float] = set()
        for i, (line, pts) in enumerate(_sweep_points(sd, sweep, y).items()):
            if not pts:
                continue
            any_point = True
            xs = [x for x, _ in pts]
            ticks.update(xs)
            stats = [describe(ys) for _, ys in pts]
            lo, hi = metric_range(y)  # bars clipped to the values the metric can take
            spread = [st.std if _fin(st.std) else 0.0 for st in stats]
            ax.errorbar(xs, [st.mean for st in stats],
                        yerr=[[min(d, st.mean - lo) for d, st in zip(spread, stats)],
                              [min(d, hi - st.mean) for d, st in zip(spread, stats)]],
                        fmt="-o", color=f"C{i}", ms=4, capsize=3, label=line)
            for x, ys in pts:
                ax.scatter([x] * len(ys), ys, s=10, color=f"C{i}", alpha=0.4, lw=0)
        if ticks and len(ticks) <= 12:  # the values swept, not matplotlib's round numbers
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
        ax.set_xlabel(_metric_title(sweep.x))
        ax.set_ylabel(_metric_title(y))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    if not any_point:
        plt.close(fig)
        return False
    fig.suptitle(sweep.title or f"{sd.setting.name}: stage {sweep.stage}, mean ± std over seeds",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


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
                rel = Path("artifacts", _slug(sd.setting.name), _slug(st), _slug(label),
                           f"seed{p.run.replicate}", *[_slug(x) for x in Path(inner).parts])
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
    return _table(["stage / method"] + kinds, rows)


# ------------------------------------------------------------------------------------------------
# The README
# ------------------------------------------------------------------------------------------------
EXPLAIN = [
    "How to read the numbers:",
    "",
    "- **mean ± std (n)**: over seeds, i.e. independent replicates of the whole protocol (`seedN` "
    "in the run names); std is the sample standard deviation (n − 1); n counts finished stage "
    "runs, and \"3 of 5\" means two are missing.",
    f"- **95% CI**: percentile bootstrap of the mean over seeds ({BOOTSTRAP_RESAMPLES} resamples, "
    f"resampling seed {BOOTSTRAP_SEED}); none for a single seed, and too narrow with few seeds.",
    f"- **claims**: one-sided t-tests at alpha = {ALPHA} of d = mean(left) − mean(right), paired "
    "over replicates when both sides have the same seeds, Welch's otherwise. `A > B` is "
    "*reproduced* when the one-sided 95% lower bound of d is above 0, `A >= B` "
    "(non-inferiority) when it is above −margin (default 0.01). A claim is *not reproduced* "
    "when the upper bound is below +margin (for `>`: no improvement of that size) or below "
    "−margin (for `>=`: worse by more than the margin), and *inconclusive* otherwise or with "
    "fewer than two seeds a side.",
    "- **transfer gain**: phase II accuracy minus the from-scratch baseline on the same task, "
    "paired by replicate.",
    "- **cost**: means over seeds of training seconds per epoch, training samples per second, "
    "the increase of the process's resident memory during the stage over what it held when the "
    "stage started (what the stage itself needed), the process's peak resident memory (which "
    "includes the interpreter, torch and the data), and on CUDA the peak allocation; × std is "
    "the ratio to the std row of the same stage.",
]


def render(data: ReportData, *, command: str, figures: dict | None = None,
           artifacts: dict | None = None, timestamp: str | None = None,
           sweeps: dict | None = None) -> str:
    suite = data.suite
    out = [f"# Report: suite `{suite.name}`", ""]
    if suite.description.strip():
        out += [" ".join(suite.description.split()), ""]
    counts = data.counts()
    total = sum(counts.values())
    state = ", ".join(f"{counts[k]} {k}" for k in (FINISHED, RUNNING, FAILED, SKIPPED, KILLED, MISSING)
                      if counts.get(k))
    out += [f"Profile `{suite.profile or '(none)'}`; {total} planned stage runs: {state or 'none'}.",
            ""] + profile_lines(suite) + [f"Produced by `{command}`.", ""]
    paper = paper_runs(suite)
    if timestamp:
        out += [f"{TIMESTAMP_PREFIX}{timestamp}._", ""]
    if counts.get(FINISHED, 0) < total:
        out += [f"**Incomplete:** {total - counts.get(FINISHED, 0)} of {total} planned stage runs "
                "have not finished; the tables use what there is and the section *Not finished* "
                "lists the rest.", ""]
    out += EXPLAIN + [""]
    out += ["## Claims", ""] + claims_table(data)
    for sd in data.settings:
        title = f"## Setting `{sd.setting.name}`" if len(data.settings) > 1 else "## Results"
        out += [title, ""]
        if sd.setting.description.strip() and len(data.settings) > 1:
            out += [" ".join(sd.setting.description.split()), ""]
        out += ["### Final test accuracy: mean ± std (n)", ""] + main_table(sd)
        out += budget_section(sd, suite, paper)
        out += metric_tables(sd)
        for i, sweep in enumerate(sd.setting.report.sweeps):
            out += [f"### Sweep: {', '.join(_metric_title(y) for y in sweep.y)} against "
                    f"{_metric_title(sweep.x)}", ""] + sweep_tables(sd, sweep)
            rel = (sweeps or {}).get((sd.setting.name, i))
            if rel:
                out += [f"![sweep {i + 1}]({rel})", ""]
        out += ["### 95% bootstrap confidence intervals of the mean", ""] + ci_table(sd)
        gain = gain_table(sd)
        if gain:
            out += ["### Transfer gain (phase II minus the from-scratch baseline, per replicate)",
                    ""] + gain
        cost = cost_table(sd)
        if cost:
            out += ["### Cost", ""] + cost
        if figures:
            figs = figures.get(sd.setting.name, [])
            if figs:
                out += ["### Figures", ""]
                for caption, rel in figs:
                    out += [f"![{caption}]({rel})", ""]
        if artifacts:
            arts = artifacts.get(sd.setting.name, [])
            if arts:
                out += ["### Evaluator images", "",
                        "The last image of each kind logged by the lowest finished seed of each "
                        "stage and method (the other seeds' are in the store).", ""]
                out += artifact_table(arts)
        out += ["### Per-seed final test accuracy", ""] + per_seed_tables(sd)
    missing = [line for sd in data.settings for line in missing_lines(sd)]
    if missing or data.stale:
        out += ["## Not finished", ""]
        if missing:
            out += [f"{len(missing)} planned stage runs have no finished run in the store "
                    "(`harness run` with the same suite and profile runs them):", ""] + missing + [""]
        if data.stale:
            out += [f"{data.stale} finished stage runs in the store belong to another "
                    "configuration of this suite (another profile, or older code or data) and are "
                    "not used here.", ""]
    out += provenance(data)
    return "\n".join(out).rstrip() + "\n"


def budget_section(sd: SettingData, suite: Suite, paper: list | None) -> list[str]:
    """The training budget of every stage (and the paper's), then the paper's values beside the
    measured ones, with a warning where the budgets differ."""
    out = []
    header, rows = budget_rows(sd, paper)
    if rows:
        out += ["### Training budget", "",
                f"What each stage trained with in profile `{suite.profile or '(none)'}`"
                + (", and the paper's budget (the suite's `paper` profile)" if paper else "")
                + ":", ""] + _table(header, rows)
    ref = reference_table(sd)
    if ref:
        out += ["### Paper's values beside the measured ones", ""]
        if paper and suite.profile != PAPER_PROFILE:
            out += [f"Measured with the budget of profile `{suite.profile}` above, not the "
                    "paper's: a difference may be the budget's.", ""]
        out += ref
    return out


def provenance(data: ReportData) -> list[str]:
    suite = data.suite
    used = [r for sd in data.settings for r in sd.finished()]
    out = ["## Provenance", ""]
    path = Path(suite.path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "?"
    out += [f"- suite file: `{suite.path}` (sha256 {digest}), profile `{suite.profile or '(none)'}`",
            f"- tracking store: `{data.store_uri}`, experiment `{suite.name}`"]
    commits: dict[str, int] = defaultdict(int)
    versions: dict[str, set] = defaultdict(set)
    parents = set()
    for r in used:
        commits[r.tags.get(f"{TAG}git_commit", "unknown")] += 1
        try:
            recorded = json.loads(r.tags.get(f"{TAG}versions", "{}"))
        except json.JSONDecodeError:  # a tag edited by hand: this run names no versions
            recorded = {}
        for k, v in recorded.items():
            versions[k].add(str(v))
        parents.add(r.tags.get("mlflow.parentRunId", ""))
    if commits:
        out.append("- git commit of the stage runs: " + ", ".join(
            f"`{c}` ({n} runs)" for c, n in sorted(commits.items())))
    if versions:
        out.append("- library versions: " + ", ".join(
            f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())))
    commands = sorted({(tags.get(f"{TAG}command", ""), tags.get(f"{TAG}host", ""))
                       for rid, tags in data.invocations.items() if rid in parents})
    for cmd, host in commands:
        out.append(f"- runs produced by `{cmd}`" + (f" on host `{host}`" if host else ""))
    return out + [""]


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
def write_report(data: ReportData, store: Store, out: Path, *, command: str,
                 force: bool = False) -> Path:
    """Write README.md, figures/ and artifacts/ under ``out``, after removing what the previous
    report there wrote (see ``harness.report_folder``); nothing is written outside ``out``."""
    folder = ReportFolder(out, force=force)
    folder.clear()
    figures: dict[str, list] = {}
    artifacts: dict[str, list] = {}
    sweeps: dict[tuple[str, int], str] = {}
    for sd in data.settings:
        prefix = _slug(sd.setting.name)
        figs = []
        if final_figure(sd, folder.path(f"figures/{prefix}-final.png")):
            figs.append(("final test accuracy per stage", f"figures/{prefix}-final.png"))
        if curves_figure(sd, store, folder.path(f"figures/{prefix}-curves.png"),
                         paper_epochs=paper_epochs(data.suite, sd.setting.name)):
            figs.append(("test accuracy per epoch", f"figures/{prefix}-curves.png"))
        figures[sd.setting.name] = figs
        for i, sweep in enumerate(sd.setting.report.sweeps):
            rel = f"figures/{prefix}-sweep{i + 1}.png"
            if sweep_figure(sd, sweep, folder.path(rel)):
                sweeps[(sd.setting.name, i)] = rel
        artifacts[sd.setting.name] = copy_artifacts(sd, store, folder)
    text = render(data, command=command, figures=figures, artifacts=artifacts, sweeps=sweeps,
                  timestamp=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    path = folder.path("README.md")
    path.write_text(text)
    folder.path("claims.json").write_text(json.dumps(_clean([v.as_dict() for v in data.verdicts]),
                                                     indent=2, sort_keys=True) + "\n")
    folder.finish()
    return path


def _clean(obj):
    """NaN and infinities become None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def log_summary(tracker, plan, command: str) -> list[Verdict]:
    """Give the invocation's parent run the report's tables (``report/summary.md``), the claim
    verdicts (``report/claims.json``) and one tag per claim: ``harness.claim.N`` = verdict,
    ``harness.claim.N.text`` = the claim with its numbers. N counts from 1 over all settings."""
    if tracker.parent_id is None:
        return []
    store = Store.of_tracker(tracker)
    data = collect(plan.suite, plan.runs, plan.identities, store)
    text = render(data, command=command)
    tracker.client.log_text(tracker.parent_id, text, "report/summary.md")
    tracker.client.log_text(tracker.parent_id,
                            json.dumps(_clean([v.as_dict() for v in data.verdicts]), indent=2,
                                       sort_keys=True) + "\n", "report/claims.json")
    for i, v in enumerate(data.verdicts, 1):
        prefix = f"{v.setting}: " if len(data.settings) > 1 else ""
        tracker.client.set_tag(tracker.parent_id, f"{TAG}claim.{i}", v.verdict)
        tracker.client.set_tag(tracker.parent_id, f"{TAG}claim.{i}.text", (prefix + v.summary())[:5000])
    return data.verdicts


def report_suite(suite: Suite, plugins, *, home: Path, out: Path, data_root: Path,
                 command: str, force: bool = False) -> tuple[ReportData, Path]:
    """What ``harness report`` does: plan the suite (no training), read the store, write."""
    from .runner import make_plan

    plan = make_plan(suite, plugins, data_root)
    store = Store.open(home, suite.name)
    data = collect(suite, plan.runs, plan.identities, store)
    return data, write_report(data, store, out, command=command, force=force)
