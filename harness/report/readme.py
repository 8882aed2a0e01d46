"""The report's README: the header (profile, what finished, how to read the numbers), the claims,
each setting's tables and figures, what has not finished, and where the numbers came from; and
the two ways it is written, into ``reports/<suite>/`` and onto an invocation's parent run.

Output is deterministic: the same store gives the same README (but for its one timestamp line),
the same figures and the same copied artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import defaultdict
from pathlib import Path

from ..claims import Verdict
from ..report_folder import ReportFolder
from ..stats import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from ..suite import Suite
from ..tracking import TAG
from .artifacts import artifact_table, copy_artifacts
from .budget import (PAPER_PROFILE, budget_rows, paper_epochs, paper_runs, profile_lines,
                     profile_name)
from .collect import FAILED, FINISHED, KILLED, MISSING, RUNNING, SKIPPED, ReportData, SettingData, collect
from .convergence import convergence_line, convergence_section, explain_convergence
from .divergence import divergence_section
from .figures import curves_figure, final_figure, sweep_figure
from .format import metric_title, slug, table
from .store import Store
from .tables import (ci_table, claims_table, cost_table, gain_table, main_table, metric_tables,
                     missing_lines, per_seed_tables, reference_table, sweep_tables)

TIMESTAMP_PREFIX = "_Generated at "


def explain(baselines: list[str]) -> list[str]:
    """How to read the numbers; ``baselines`` are the methods the cost ratios divide by."""
    base = "/".join(baselines)
    return [
        "How to read the numbers:",
        "",
        "- **mean ± std (n)**: over seeds, i.e. independent replicates of the whole protocol "
        "(`seedN` in the run names); std is the sample standard deviation (n − 1); n counts "
        "finished stage runs, and \"3 of 5\" means two are missing.",
        f"- **95% CI**: percentile bootstrap of the mean over seeds ({BOOTSTRAP_RESAMPLES} "
        f"resamples, resampling seed {BOOTSTRAP_SEED}); none for a single seed, and too narrow "
        "with few seeds.",
        f"- **claims**: one-sided t-tests at alpha = {ALPHA} of d = mean(left) − mean(right), "
        "paired over replicates when both sides have the same seeds, Welch's otherwise. `A > B` "
        "is *reproduced* when the one-sided 95% lower bound of d is above 0, `A >= B` "
        "(non-inferiority) when it is above −margin (default 0.01). A claim is *not reproduced* "
        "when the upper bound is below +margin (for `>`: no improvement of that size) or below "
        "−margin (for `>=`: worse by more than the margin), and *inconclusive* otherwise or with "
        "fewer than two seeds a side. The last column says which of the claim's rows were still "
        "improving, unclear or could not be judged (see convergence): a verdict against a row "
        "that had not finished learning measures its budget as much as its method.",
        explain_convergence(),
        "- **transfer gain**: phase II accuracy minus the from-scratch baseline on the same "
        "task, paired by replicate.",
        "- **cost**: means over seeds of training seconds per epoch, training samples per "
        "second, the increase of the process's resident memory during the stage over what it "
        "held when the stage started (what the stage itself needed), the process's peak "
        "resident memory (which includes the interpreter, torch and the data), and on CUDA the "
        f"peak allocation; × {base} is the ratio to the {base} row of the same stage.",
    ]


def render(data: ReportData, *, command: str, figures: dict | None = None,
           artifacts: dict | None = None, timestamp: str | None = None,
           sweeps: dict | None = None) -> str:
    out = _header(data, command, timestamp)
    out += ["## Claims", ""] + claims_table(data)
    paper = paper_runs(data.suite)
    for sd in data.settings:
        out += _setting_section(sd, data, paper, figures or {}, artifacts or {}, sweeps or {})
    out += divergence_section(data) + _not_finished(data) + provenance(data)
    return "\n".join(out).rstrip() + "\n"


def _header(data: ReportData, command: str, timestamp: str | None) -> list[str]:
    """Title, profile, what finished, and how to read the numbers."""
    suite = data.suite
    out = [f"# Report: suite `{suite.name}`", ""]
    if suite.description.strip():
        out += [" ".join(suite.description.split()), ""]
    counts = data.counts()
    total = sum(counts.values())
    state = ", ".join(f"{counts[k]} {k}" for k in (FINISHED, RUNNING, FAILED, SKIPPED, KILLED, MISSING)
                      if counts.get(k))
    expected = data.expected_count()
    if expected:
        state += f" ({expected} of them expected to fail: section *Expected divergence*)"
    named = profile_name(suite.profile)
    out += [f"{named[0].upper()}{named[1:]}; {total} planned stage runs: {state or 'none'}.",
            ""] + profile_lines(suite) + [f"Produced by `{command}`.", ""]
    if timestamp:
        out += [f"{TIMESTAMP_PREFIX}{timestamp}._", ""]
    unfinished = total - counts.get(FINISHED, 0) - expected
    if unfinished:
        out += [f"**Incomplete:** {unfinished} of {total} planned stage runs have not finished"
                + (" (besides those expected to fail)" if expected else "")
                + "; the tables use what there is and the section *Not finished* lists the rest.",
                ""]
    baselines = sorted({str(sd.setting.report.baseline) for sd in data.settings})
    return out + explain(baselines) + [""]


def _setting_section(sd: SettingData, data: ReportData, paper: list | None, figures: dict,
                     artifacts: dict, sweeps: dict) -> list[str]:
    """One setting's tables, in the order a reader of the paper looks for them."""
    title = sd.setting.report.metric_title
    several = len(data.settings) > 1
    out = [f"## Setting `{sd.setting.name}`" if several else "## Results", ""]
    if sd.setting.description.strip() and several:
        out += [" ".join(sd.setting.description.split()), ""]
    out += [f"### Final {title}: mean ± std (n)", ""] + main_table(sd) + convergence_line(sd)
    out += budget_section(sd, data.suite, paper)
    conv = convergence_section(sd)
    if conv:
        out += ["### Convergence", ""] + conv
    out += metric_tables(sd)
    for i, sweep in enumerate(sd.setting.report.sweeps):
        out += [f"### Sweep: {', '.join(metric_title(y) for y in sweep.y)} against "
                f"{metric_title(sweep.x)}", ""] + sweep_tables(sd, sweep)
        rel = sweeps.get((sd.setting.name, i))
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
    out += _images(figures.get(sd.setting.name, []), artifacts.get(sd.setting.name, []))
    return out + [f"### Per-seed final {title}", ""] + per_seed_tables(sd)


def _images(figs: list, arts: list) -> list[str]:
    out = []
    if figs:
        out += ["### Figures", ""]
        for caption, rel in figs:
            out += [f"![{caption}]({rel})", ""]
    if arts:
        out += ["### Evaluator images", "",
                "The last image of each kind logged by the lowest finished seed of each "
                "stage and method (the other seeds' are in the store).", ""]
        out += artifact_table(arts)
    return out


def _not_finished(data: ReportData) -> list[str]:
    missing = [line for sd in data.settings for line in missing_lines(sd)]
    if not (missing or data.stale):
        return []
    out = ["## Not finished", ""]
    if missing:
        out += [f"{len(missing)} planned stage runs have no finished run in the store "
                "(`harness run` with the same suite and profile runs them):", ""] + missing + [""]
    if data.stale:
        out += [f"{data.stale} finished stage runs in the store belong to another "
                "configuration of this suite (another profile, or older code or data) and are "
                "not used here.", ""]
    return out


def budget_section(sd: SettingData, suite: Suite, paper: list | None) -> list[str]:
    """The training budget of every stage (and the paper's), then the paper's values beside the
    measured ones, with a warning where the budgets differ."""
    out = []
    header, rows = budget_rows(sd, paper)
    if rows:
        out += ["### Training budget", "",
                f"What each stage trained with in {profile_name(suite.profile)}"
                + (", and the paper's budget (the suite's `paper` profile)" if paper else "")
                + ":", ""] + table(header, rows)
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
    out += [f"- suite file: `{suite.path}` (sha256 {digest}), {profile_name(suite.profile)}",
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
        figures[sd.setting.name] = _draw(sd, data.suite, store, folder, sweeps)
        artifacts[sd.setting.name] = copy_artifacts(sd, store, folder)
    text = render(data, command=command, figures=figures, artifacts=artifacts, sweeps=sweeps,
                  timestamp=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    path = folder.path("README.md")
    path.write_text(text)
    folder.path("claims.json").write_text(json.dumps(_clean([v.as_dict() for v in data.verdicts]),
                                                     indent=2, sort_keys=True) + "\n")
    folder.finish()
    return path


def _draw(sd: SettingData, suite: Suite, store: Store, folder: ReportFolder,
          sweeps: dict[tuple[str, int], str]) -> list[tuple[str, str]]:
    """The setting's figures, as (caption, path in the folder); its sweeps' go into ``sweeps``."""
    prefix, title = slug(sd.setting.name), sd.setting.report.metric_title
    figs = []
    if final_figure(sd, folder.path(f"figures/{prefix}-final.png")):
        figs.append((f"final {title} per stage", f"figures/{prefix}-final.png"))
    if curves_figure(sd, store, folder.path(f"figures/{prefix}-curves.png"),
                     paper_epochs=paper_epochs(suite, sd.setting.name)):
        figs.append((f"{title} per epoch", f"figures/{prefix}-curves.png"))
    for i, sweep in enumerate(sd.setting.report.sweeps):
        rel = f"figures/{prefix}-sweep{i + 1}.png"
        if sweep_figure(sd, sweep, folder.path(rel)):
            sweeps[(sd.setting.name, i)] = rel
    return figs


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
