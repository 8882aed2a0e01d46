"""What a report compared: which profile it used (and which others exist), what that profile
cuts from the paper, and the training budget of every stage beside the paper's.

A "measured - paper" number without the budget misleads: 200 epochs are not the paper's 20000.
The paper's budget is the suite's ``paper`` profile, where it has one.
"""

from __future__ import annotations

from ..suite import Suite, expand, parse_suite
from ..tracking import TAG

PAPER_PROFILE = "paper"


def profile_name(profile: str | None) -> str:
    """How the report names a profile; runs of no profile ran on the suite's own settings."""
    return f"profile `{profile}`" if profile else "no profile (the suite's own settings)"


def choose_profile(suite: Suite, store) -> tuple[str | None, str]:
    """The profile ``harness report`` uses when none is named: that of the newest finished stage
    run in the store (the last one run), else the suite's default. Returns it and a line that
    says so, naming the other profiles that have runs. Runs of no profile (a suite without a
    `default` profile, run without --profile) are a candidate like any profile."""
    profiles = list((suite.raw.get("profiles") or {}))
    if not profiles:
        return suite.profile, ""
    candidates = set(profiles) | ({""} if "default" not in profiles else set())
    newest: dict[str, int] = {}
    for record in store.stage_runs():
        prof = record.tags.get(f"{TAG}profile", "")
        if record.status == "FINISHED" and prof in candidates:
            newest[prof] = max(newest.get(prof, 0), record.start_time)
    if not newest:
        return suite.profile, (f"report of {profile_name(suite.profile)}: no finished runs of "
                               f"it or any other profile in the store yet")
    chosen = max(newest, key=newest.get)
    others = sorted(profile_name(p) for p in newest if p != chosen)
    also = f"; runs of {', '.join(others)} too" if others else ""
    return chosen or None, (f"report of {profile_name(chosen)}, that of the newest finished runs "
                            f"in the store{also} (--profile P for another)")


def profile_lines(suite: Suite) -> list[str]:
    """The README's lines on the profile: its description and the suite's other profiles."""
    profiles = suite.raw.get("profiles") or {}
    out = []
    note = (profiles.get(suite.profile) or {}).get("description", "") if suite.profile else ""
    if isinstance(note, str) and note.strip():
        out += [f"What profile `{suite.profile}` cuts from the paper: {' '.join(note.split())}", ""]
    others = [p for p in profiles if p != suite.profile]
    if others:
        out += ["Other profiles of this suite: " + ", ".join(f"`{p}`" for p in others)
                + " (`harness report --profile P`).", ""]
    return out


def _budget(runs, stage: str) -> dict[str, str]:
    """The run settings of a stage, each value or the distinct values joined by '/'."""
    mine = [r for r in runs if r.stage == stage]
    values: dict[str, list[str]] = {}
    for r in mine:
        sched = r.run.get("schedule") or {}
        for key, value in (("epochs", r.run.get("epochs")), ("batch", r.run.get("batch_size")),
                           ("optimizer", r.run.get("optimizer")), ("lr", f"{r.run.get('lr'):g}"),
                           ("schedule", sched.get("name", "constant"))):
            values.setdefault(key, [])
            if str(value) not in values[key]:
                values[key].append(str(value))
    return {k: "/".join(v) for k, v in values.items()}


def paper_runs(suite: Suite) -> list | None:
    """The stage runs of the suite's ``paper`` profile, None when it has none (or is it)."""
    if suite.profile == PAPER_PROFILE or PAPER_PROFILE not in (suite.raw.get("profiles") or {}):
        return None
    return expand(parse_suite(suite.raw, suite.path, PAPER_PROFILE, defaults=suite.defaults))


def budget_rows(sd, paper: list | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows: stage | epochs | batch | optimizer | lr | schedule | training samples,
    as measured, and (with a ``paper`` profile) the paper's epochs, batch and lr beside them."""
    runs = [p.run for p in sd.planned]
    mine_paper = [r for r in (paper or []) if r.setting == sd.setting.name]
    header = ["stage", "epochs", "batch", "optimizer", "lr", "schedule", "training samples"]
    if mine_paper:
        header += ["paper epochs", "paper batch", "paper lr"]
    rows = []
    for stage in sd.setting.stages:
        b = _budget(runs, stage)
        if not b:
            continue
        sizes = sorted({p.record.params.get("measured.train_samples", "") for p in sd.planned
                        if p.run.stage == stage and p.record is not None} - {""})
        row = [stage, b["epochs"], b["batch"], b["optimizer"], b["lr"], b["schedule"],
               "/".join(sizes) or "–"]
        if mine_paper:
            pb = _budget(mine_paper, stage)
            row += [pb.get("epochs", "–"), pb.get("batch", "–"), pb.get("lr", "–")]
        rows.append(row)
    return header, rows


def paper_epochs(suite: Suite, setting: str) -> dict[str, int]:
    """Stage -> the paper's epoch count (from the ``paper`` profile), where it is one number:
    where a figure may put the paper's value on an epoch axis."""
    runs = expand(suite) if suite.profile == PAPER_PROFILE else (paper_runs(suite) or [])
    found: dict[str, set[int]] = {}
    for r in runs:
        if r.setting == setting:
            found.setdefault(r.stage, set()).add(int(r.run["epochs"]))
    return {stage: next(iter(e)) for stage, e in found.items() if len(e) == 1}
