"""The report's tables, as markdown lines: claims, the headline metric per stage and method, the
suite's extra metrics and sweeps, confidence intervals, per-seed values, the paper's values,
transfer gains over the from-scratch baseline, and cost relative to the baseline row."""

from __future__ import annotations

import math

from ..stats import ALPHA, describe, mean, paired_t
from ..suite import Sweep, stage_axes
from .collect import FINISHED, ReportData, SettingData
from .format import DASH, cell, ci, fin, metric_title, num, p_value, table

COST_METRICS = (("final_seconds_per_epoch", "s/epoch"), ("final_train_samples_per_s", "samples/s"),
                ("final_rss_increase_mb", "RSS increase MB"), ("final_peak_rss_mb", "peak RSS MB"),
                ("final_peak_cuda_mb", "peak CUDA MB"))


def claims_table(data: ReportData) -> list[str]:
    if not data.verdicts:
        return ["The suite states no claims.", ""]
    multi = len(data.settings) > 1
    header = (["#"] + (["setting"] if multi else []) +
              ["claim", "metric", "verdict", "test", "n", "left", "right", "d", "95% CI of d",
               "one-sided 95% bound", "p", "effect", "convergence of its rows"])
    rows, notes = [], []
    for i, v in enumerate(data.verdicts, 1):
        t = v.test
        base = [str(i)] + ([v.setting] if multi else []) + [f"`{v.claim.text}`",
                                                             metric_title(v.claim.metric),
                                                             f"**{v.verdict}**"]
        if t is None:
            rows.append(base + [DASH] * 9 + [v.convergence or DASH])
        else:
            n = str(t.n_left) if t.kind == "paired" else f"{t.n_left}/{t.n_right}"
            bound = t.bound(1 - ALPHA, "lower")
            rows.append(base + [
                "paired t" if t.kind == "paired" else "Welch t", n, f"{t.mean_left:.4g}",
                f"{t.mean_right:.4g}", f"{t.diff:+.4g}",
                f"[{num(v.diff_ci[0], '+.4g')}, {num(v.diff_ci[1], '+.4g')}]",
                f"{num(bound, '+.4g')} vs {v.threshold:+.4g}", p_value(t.p),
                f"{t.effect_name} = {num(t.effect, '.3g')}", v.convergence or DASH])
        notes.append(f"{i}. {v.reason}.")
    return table(header, rows) + notes + [""]


def _stage_table(sd: SettingData, metric: str, cell) -> list[str]:
    """A row per method, a column per stage; ``cell(summary over seeds, expected runs)``."""
    stages = list(sd.setting.stages)
    rows = []
    for label in sd.row_order():
        cells = [label]
        for st in stages:
            exp = len(sd.expected(st, label))
            cells.append(cell(describe(list(sd.values(st, label, metric).values())), exp)
                         + sd.flag(st, label) if exp else "")
        rows.append(cells)
    return table(["method"] + stages, rows)


def main_table(sd: SettingData, metric: str | None = None) -> list[str]:
    return _stage_table(sd, metric or sd.metric, cell)


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
            out += [f"### Final {metric_title(metric)}: mean ± std (n)", ""] + main_table(sd, metric)
        return out + note
    stage = stages[0]
    rows = []
    for label in sd.row_order():
        exp = len(sd.expected(stage, label))
        if exp:
            rows.append([label + sd.flag(stage, label)]
                        + [cell(describe(list(sd.values(stage, label, m).values())), exp)
                           for m in logged])
    title = ", ".join(metric_title(m) for m in logged)
    out = [f"### {title}: mean ± std (n)", ""] + table(["method"] + [metric_title(m) for m in logged],
                                                          rows) if logged else []
    return out + note


def sweep_points(sd: SettingData, sweep: Sweep, y: str) -> dict[str, list[tuple[float, list[float]]]]:
    """line -> [(x, y of each seed)], x being the mean over seeds of the row's x metric."""
    out: dict[str, list[tuple[float, list[float]]]] = {}
    for line, labels in sweep.lines:
        points = []
        for label in labels:
            xs = list(sd.values(sweep.stage, label, sweep.x).values())
            ys = list(sd.values(sweep.stage, label, y).values())
            if xs and ys:
                points.append((mean(xs), ys))
        out[line] = sorted(points, key=lambda p: p[0])
    return out


def _sweep_flags(sd: SettingData, sweep: Sweep, labels) -> dict[float, str]:
    """x -> the convergence mark of the row plotted there (as ``sweep_points`` places it)."""
    out = {}
    for label in labels:
        xs = list(sd.values(sweep.stage, label, sweep.x).values())
        if xs:
            out[mean(xs)] = sd.flag(sweep.stage, label)
    return out


def sweep_tables(sd: SettingData, sweep: Sweep) -> list[str]:
    """For each y: a row per line, a column per value of x, cells mean ± std (n) over seeds."""
    out = []
    for y in sweep.y:
        points = sweep_points(sd, sweep, y)
        xs = sorted({x for pts in points.values() for x, _ in pts})
        out += [f"{metric_title(y)} against {metric_title(sweep.x)} (stage {sweep.stage}):", ""]
        if not xs:
            out += ["No finished run of these rows logged both metrics.", ""]
            continue
        rows = []
        for line, pts in points.items():
            by_x = {x: ys for x, ys in pts}
            flags = _sweep_flags(sd, sweep, dict(sweep.lines)[line])
            rows.append([line] + [cell(describe(by_x[x]), len(by_x[x]), ".3f") + flags.get(x, "")
                                  if x in by_x else "" for x in xs])
        out += table(["line"] + [f"{metric_title(sweep.x)} {x:g}" for x in xs], rows)
    return out


def ci_table(sd: SettingData, metric: str | None = None) -> list[str]:
    return _stage_table(sd, metric or sd.metric, lambda summary, expected: ci(summary))


def per_seed_tables(sd: SettingData, metric: str | None = None) -> list[str]:
    metric = metric or sd.metric
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
                    cells.append(num(p.record.metrics.get(metric)))
                else:
                    cells.append(p.state)
            rows.append(cells)
        sums = [describe(list(sd.values(st, label, metric).values())) for label in labels]
        rows.append(["Avg."] + [num(s.mean) for s in sums])
        rows.append(["Std. Dev."] + [num(s.std) for s in sums])
        out += [f"Stage {st}:", ""] + table(["training run"] + [f"{r}_{st}{sd.flag(st, r)}"
                                                                for r in labels], rows)
    return out


def reference_table(sd: SettingData) -> list[str]:
    if not sd.references:
        return []
    rows = []
    stages, labels = list(sd.setting.stages), sd.row_order()
    for ref in sorted(sd.references, key=lambda r: (stages.index(r.stage), labels.index(r.label))):
        s = describe(list(sd.values(ref.stage, ref.label, ref.metric).values()))
        paper = num(ref.mean) + (f" ± {num(ref.std)}" if fin(ref.std) else "")
        paper += f" ({ref.n})" if ref.n else ""
        inside = DASH
        if fin(s.ci_low):
            inside = "yes" if s.ci_low <= ref.mean <= s.ci_high else "no"
        rows.append([ref.stage, ref.label + sd.flag(ref.stage, ref.label), metric_title(ref.metric),
                     paper, ref.source or DASH,
                     cell(s, len(sd.expected(ref.stage, ref.label))), ci(s),
                     num(s.mean - ref.mean, "+.3f") if s.n else DASH, inside])
    return table(["stage", "method", "metric", "paper", "source", "measured", "measured 95% CI",
                   "measured − paper", "paper inside CI"], rows)


def transfer_pairs(sd: SettingData) -> list[tuple[str, str, str]]:
    """(stage, baseline stage, baseline row): a stage that starts from an upstream stage and a
    from-scratch stage trained on the same dataset, not depending on the method, with one row."""
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


def gain_table(sd: SettingData, metric: str | None = None) -> list[str]:
    metric = metric or sd.metric
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
                p = p_value(paired_t([vals[k] for k in shared], [base_values[k] for k in shared]).p)
            ref = DASH
            if (stage, label) in refs and (base, base_row) in refs:
                ref = f"{refs[(stage, label)] - refs[(base, base_row)]:+.3f}"
            rows.append([label + sd.flag(stage, label), f"{stage} − {base}.{base_row}{sd.flag(base, base_row)}",
                         (f"{s.mean:+.3f} ± {num(s.std)} ({s.n})" if s.n > 1 else
                          f"{s.mean:+.3f} (1)" if s.n == 1 else "no pairs"),
                         ci(s, "+.3f"), p, ref])
    if not rows:
        return []
    return table(["method", "gain", "mean ± std (pairs)", "95% CI", "p (gain > 0)", "paper"], rows)


def baseline_row(sd: SettingData, stage: str) -> str | None:
    """The row of a stage trained by the setting's baseline method (``report: {baseline:}``),
    which the cost table divides by."""
    names = {ref.label: ref.name for ref in sd.setting.grid.get("method", [])}
    for st in sd.setting.stages.values():
        if st.method is not None:
            names.setdefault(st.method.label, st.method.name)
    baseline = sd.setting.report.baseline
    return next((r for r in sd.rows[stage] if names.get(r) == baseline), None)


def cost_table(sd: SettingData) -> list[str]:
    present = [(k, title) for k, title in COST_METRICS
               if any(k in r.metrics for r in sd.finished())]
    if not present:
        return []
    header = ["stage", "method", "device, threads"]
    for _, title in present:
        header += [title, f"× {sd.setting.report.baseline}"]
    rows = []
    for st in sd.setting.stages:
        base_label = baseline_row(sd, st)
        for label in [r for r in sd.row_order() if sd.expected(st, r)]:
            recs = [p.record for p in sd.expected(st, label) if p.state == FINISHED]
            if not recs:
                continue
            env = sorted({f"{r.params.get('measured.device', '?')}, "
                          f"{r.params.get('measured.threads', '?')}" for r in recs})
            cells = [st, label + sd.flag(st, label), "; ".join(env)]
            for key, _ in present:
                s = describe(list(sd.values(st, label, key).values()))
                base = describe(list(sd.values(st, base_label, key).values())) if base_label else None
                cells.append(cell(s, len(recs), ".4g") if s.n else DASH)
                ratio = (s.mean / base.mean if base is not None and base.n and s.n and base.mean
                         else math.nan)
                cells.append(num(ratio, ".2f"))
            rows.append(cells)
    return table(header, rows)


def missing_lines(sd: SettingData) -> list[str]:
    """Runs that did not finish, but for those the suite expects to fail (listed apart)."""
    lines = []
    expected = {p.run.key for p in sd.expected_failures()}
    for p in sd.planned:
        if p.state != FINISHED and p.run.key not in expected:
            why = f": {p.reason.splitlines()[0][:300]}" if p.reason else ""
            lines.append(f"- `{p.run.name}` ({p.identity}): {p.state}{why}")
    return lines

