"""Rows a suite expects to fail, and why: a setting's ``expect_failure:`` key.

Some failures are the finding: paper 002's loss as written diverges without gradient clipping,
and a suite that reproduces it must say so rather than exit 1 and read as broken to a newcomer.
As with pytest's ``xfail``, the suite names the row and the reason::

    expect_failure:
      RN_paper: "the paper's per-sample sum diverges without clipping (Sec. 3)"   # every stage
      mnist.RN_paper: "..."                                                       # one stage

A stage run of such a row that fails is recorded FAILED as any other, but ``harness run`` exits
0 for it (and for the runs skipped because of it), and the report lists it as an expected
divergence; a failure of any other row still exits 1; a run of the row that trains fine is
reported as having trained against the expectation, not hidden. The expectation is not part of
a stage run's identity: declaring it re-runs nothing.
"""

from __future__ import annotations

from ..errors import UserError, suggest

_HINT = 'e.g. `expect_failure: {RN_paper: "the loss as written diverges without clipping"}`'


def parse_expected(raw, rows: dict[str, list[str]], *, file: str,
                   prefix: str = "") -> dict[tuple[str, str], str]:
    """``expect_failure:`` as (stage, row label) -> reason, checked against the setting's rows
    (``stage_rows``); a key is a row label (every stage that has it) or STAGE.LABEL."""
    key = f"{prefix}expect_failure"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError("expect_failure maps a row to the reason it is expected to fail",
                        file=file, key=key, hint=_HINT)
    out: dict[tuple[str, str], str] = {}
    labels = sorted({label for stage_labels in rows.values() for label in stage_labels})
    for name, reason in raw.items():
        where = f"{key}.{name}"
        if not isinstance(reason, str) or not reason.strip():
            raise UserError(f"the reason {name!r} is expected to fail is missing or not text, got "
                            f"{reason!r}", file=file, key=where,
                            hint='say why, as pytest\'s xfail does: `ROW: "diverges because ..."`')
        for stage in _stages_of(str(name), rows, labels, file, where):
            out[(stage, _label(str(name), stage))] = " ".join(reason.split())
    return out


def _label(name: str, stage: str) -> str:
    return name[len(stage) + 1:] if name.startswith(stage + ".") else name


def _stages_of(name: str, rows: dict[str, list[str]], labels: list[str], file: str,
               where: str) -> list[str]:
    """The stages a key names: STAGE.LABEL one (a known stage wins, labels may hold dots),
    a bare label every stage that has that row."""
    for stage in sorted(rows, key=len, reverse=True):
        if name.startswith(stage + ".") and _label(name, stage) in rows[stage]:
            return [stage]
    stages = [stage for stage, stage_labels in rows.items() if name in stage_labels]
    if stages:
        return stages
    stage = next((st for st in rows if name.startswith(st + ".")), None)
    if stage is not None:
        label = _label(name, stage)
        raise UserError(f"stage {stage!r} has no row {label!r}", file=file, key=where,
                        hint=suggest(label, rows[stage]))
    known = labels + [f"{st}.{label}" for st, stage_labels in rows.items() for label in stage_labels]
    raise UserError(f"no row {name!r} in this setting", file=file, key=where,
                    hint=suggest(name, known))
