"""Matching the plan with the store: each planned stage run with what the store holds for its
identity (finished, failed, skipped, running, killed or missing), grouped by setting, with the
claims decided on the finished ones and every row's convergence judged from its runs' histories
(``harness.convergence``)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..claims import (Claim, Reference, Verdict, check_claims, evaluate, parse_reference, rows_of,
                      side_values)
from ..convergence import IMPROVING, UNCLEAR, Judgement, RowConvergence, claim_note, judge
from ..suite import Setting, StageRun, Suite, stage_rows
from ..tracking import TAG
from .store import RunRecord, Store

#: the convergence states a table marks beside a row
FLAGGED = (IMPROVING, UNCLEAR)
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
    #: (stage, row, metric) -> the convergence of that metric of that row
    judgements: dict[tuple[str, str, str], Judgement] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The headline metric of the setting's tables (its ``report: {metric: ...}``)."""
        return self.setting.report.metric

    @property
    def judged_metrics(self) -> list[str]:
        """What every row's convergence is judged on: the headline metric and the training loss."""
        return [self.metric.removeprefix("final_"), *self.setting.report.convergence_loss]

    def convergence(self, stage: str, row: str, extra: str = "") -> RowConvergence | None:
        """The row's convergence over its judged metrics (and ``extra``, a claim's metric);
        None for a row without finished runs."""
        metrics = self.judged_metrics + ([extra.removeprefix("final_")] if extra else [])
        found = tuple(self.judgements[(stage, row, m)] for m in dict.fromkeys(metrics)
                      if (stage, row, m) in self.judgements)
        return RowConvergence(found) if found else None

    def flag(self, stage: str, row: str) -> str:
        """The mark a table puts beside a row that was still improving or unclear; none for a
        converged row or one that cannot be judged (the line under the first table counts
        those, so that a smoke run's tables are not a forest of marks)."""
        conv = self.convergence(stage, row)
        return f" {conv.mark}" if conv is not None and conv.state in FLAGGED else ""

    def finished(self) -> list[RunRecord]:
        return [p.record for p in self.planned if p.state == FINISHED]

    def values(self, stage: str, row: str, metric: str | None = None) -> dict[int, float]:
        """replicate -> the metric (the headline one by default) of the finished run of
        (stage, row)."""
        metric = metric or self.metric
        out = {}
        for p in self.planned:
            if p.state == FINISHED and p.run.stage == stage and p.run.row == row:
                v = p.record.metrics.get(metric)
                if v is not None and math.isfinite(v):
                    out[p.run.replicate] = float(v)
        return dict(sorted(out.items()))

    def expected_failures(self) -> list[Planned]:
        """Planned runs that did not finish as the suite expects (``expect_failure:``): a run of
        a row expected to fail that failed or was skipped, and a run skipped only because such
        runs upstream of it did not finish. In plan order, upstream first."""
        by_key = {p.run.key: p for p in self.planned}
        out: dict[tuple, Planned] = {}
        for p in self.planned:
            if p.state not in (FAILED, SKIPPED):
                continue
            upstream = [by_key[k] for k in p.run.upstream_keys() if k in by_key]
            blocked = [u for u in upstream if u.state != FINISHED]
            if p.run.expected_failure or (p.state == SKIPPED and blocked
                                          and all(u.run.key in out for u in blocked)):
                out[p.run.key] = p
        return list(out.values())

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

    def expected_count(self) -> int:
        """Planned runs that did not finish because the suite expects them to fail."""
        return sum(len(s.expected_failures()) for s in self.settings)

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
        rows = stage_rows(setting)
        claims = check_claims(setting.claims, rows, file=suite.path, metric=setting.report.metric)
        refs = parse_reference(setting.reference, rows, file=suite.path,
                               metric=setting.report.metric)
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
        judge_rows(data, store)
        settings.append(data)
    stale = len({r.identity for r in records if r.status == "FINISHED" and r.identity not in planned_ids})
    return ReportData(suite, store.uri, settings, stale, store.invocations())


def claim_margins(claims, suite_margin: float | None) -> dict[str | None, float]:
    """The gain that counts for a metric's convergence, in its units: the suite's
    ``report: {convergence: {margin: M}}`` for every metric where given; otherwise the
    smallest absolute margin of the claims on that metric, since a metric in percent (an
    error of 3.4) has claims ``within 1``, not the accuracy's 0.01; None keys the default."""
    if suite_margin is not None:
        return {None: suite_margin}
    margins: dict[str | None, float] = {}
    for claim in claims:
        if not claim.relative:
            metric = claim.metric.removeprefix("final_")
            margins[metric] = min(margins.get(metric, math.inf), claim.margin)
    return margins


def judge_rows(data: SettingData, store: Store) -> None:
    """Judge every row's convergence from the histories of its finished runs, on the judged
    metrics and on the metrics its claims compare; then note it beside each claim. A metric a
    row never logged per epoch (a cost, a final-only number) is not judged at all."""
    wanted: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)  # ordered sets
    for stage, labels in data.rows.items():
        for label in labels:
            wanted[(stage, label)].update(dict.fromkeys(data.judged_metrics))
    for claim in data.claims:
        for side in rows_of(claim.left) + rows_of(claim.right):
            wanted[(side.stage, side.label)][claim.metric.removeprefix("final_")] = None
    margins = claim_margins(data.claims, data.setting.report.convergence_margin)
    losses = data.setting.report.convergence_loss
    for (stage, label), metrics in wanted.items():
        runs = [p for p in data.expected(stage, label) if p.state == FINISHED]
        if not runs:
            continue
        epochs = int(runs[0].run.run["epochs"])
        loss_judged = False  # of the loss's names, the first the row logs is judged
        for metric in metrics:
            is_loss = metric in losses
            if is_loss and loss_judged:
                continue
            histories = {p.run.replicate: store.history(p.record.run_id, metric) for p in runs}
            if any(histories.values()):
                loss_judged |= is_loss
                data.judgements[(stage, label, metric)] = judge(
                    histories, epochs, metric=metric,
                    margin=None if is_loss else margins.get(metric, margins.get(None)),
                    relative=is_loss)
    for verdict in data.verdicts:
        claim = verdict.claim
        sides = rows_of(claim.left) + rows_of(claim.right)
        note = claim_note([(str(s), data.convergence(s.stage, s.label, claim.metric))
                           for s in dict.fromkeys(sides)])
        expected = [str(s) for s in dict.fromkeys(sides)
                    if (s.stage, s.label) in data.setting.expect_failure]
        verdict.convergence = (f"expected to fail: {', '.join(expected)}; " if expected else "") + note


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

