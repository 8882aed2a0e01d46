"""The report's figures (matplotlib, Agg, deterministic files): the headline metric per epoch,
its final value per stage and method with bootstrap intervals, and each sweep of the suite.

matplotlib is imported when the first figure is drawn: the tables, and the summary every
``harness run`` logs, never need it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..stats import describe, mean, sample_std
from ..suite import Sweep
from .collect import FINISHED, SettingData
from .format import fin, metric_title
from .store import Store
from .tables import sweep_points


def _pyplot():
    # matplotlib costs a second to import: only once a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), which must come first

    plt.rcParams["svg.hashsalt"] = "harness"
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    _pyplot().close(fig)


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
                              np.array([mean(per_step[s]) for s in steps]),
                              np.array([sample_std(per_step[s]) if len(per_step[s]) > 1 else 0.0
                                        for s in steps])))
        if lines:
            panels.append((st, lines))
    return panels


def curves_figure(sd: SettingData, store: Store, path: Path, metric: str | None = None,
                  paper_epochs: dict[str, int] | None = None) -> bool:
    """Mean over seeds of ``metric`` per epoch, one panel per stage, band = ±1 sample std
    clipped to the metric's range; the paper's value (★) at the paper's epoch count, drawn only
    where that count is known (``paper_epochs``): at the last measured epoch of a shortened
    profile it would compare budgets that differ."""
    metric = metric or sd.metric.removeprefix("final_")
    panels = _curve_panels(sd, store, metric)
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # loaded by _pyplot above: no cost of its own

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


def final_figure(sd: SettingData, path: Path, metric: str | None = None) -> bool:
    """Final metric per stage and method: each seed, the mean with its 95% bootstrap CI, and the
    paper's value where the suite gives one."""
    metric = metric or sd.metric
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
                if fin(s.ci_low):
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
    ax.set_ylabel(metric_title(metric))
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
        for i, (line, pts) in enumerate(sweep_points(sd, sweep, y).items()):
            if not pts:
                continue
            any_point = True
            xs = [x for x, _ in pts]
            ticks.update(xs)
            stats = [describe(ys) for _, ys in pts]
            lo, hi = metric_range(y)  # bars clipped to the values the metric can take
            spread = [st.std if fin(st.std) else 0.0 for st in stats]
            ax.errorbar(xs, [st.mean for st in stats],
                        yerr=[[min(d, st.mean - lo) for d, st in zip(spread, stats)],
                              [min(d, hi - st.mean) for d, st in zip(spread, stats)]],
                        fmt="-o", color=f"C{i}", ms=4, capsize=3, label=line)
            for x, ys in pts:
                ax.scatter([x] * len(ys), ys, s=10, color=f"C{i}", alpha=0.4, lw=0)
        if ticks and len(ticks) <= 12:  # the values swept, not matplotlib's round numbers
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
        ax.set_xlabel(metric_title(sweep.x))
        ax.set_ylabel(metric_title(y))
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

