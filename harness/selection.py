"""``harness run --only setting=S,stage=X,method=L``: a subset of a suite's stage runs.

Each ``--only`` is a conjunction of ``key=value`` filters; several ``--only`` are a union. The
stage runs a selected run starts from (``from:``, ``refs:``) are selected too, so that the
subset can run on its own (finished ones are skipped as usual). A filter that matches nothing
is bad input, with the values that exist.
"""

from __future__ import annotations

from .errors import UserError, suggest

#: filter key -> what of a StageRun it compares
FIELDS = {
    "setting": lambda r: r.setting,
    "stage": lambda r: r.stage,
    "method": lambda r: r.row,
    "dataset": lambda r: r.dataset.label,
    "architecture": lambda r: r.architecture.label,
    "seed": lambda r: str(r.replicate),
}


def parse_only(specs: list[str]) -> list[dict[str, str]]:
    """``["stage=A,method=RR1", ...]`` -> ``[{"stage": "A", "method": "RR1"}, ...]``."""
    filters = []
    for spec in specs:
        one: dict[str, str] = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise UserError(f"{part!r} is not key=value", key="--only",
                                hint="e.g. --only stage=AB,method=RR1")
            if key not in FIELDS:
                raise UserError(f"unknown --only key {key!r}", key="--only",
                                hint=suggest(key, FIELDS))
            one[key] = value
        if not one:
            raise UserError("an empty --only", key="--only", hint="e.g. --only stage=AB")
        filters.append(one)
    return filters


def select(runs: list, filters: list[dict[str, str]]) -> set[tuple]:
    """The keys of the runs that match a filter, and of every run upstream of them."""
    for one in filters:
        for key, value in one.items():
            known = {FIELDS[key](r) for r in runs}
            if value not in known:
                raise UserError(f"no stage run has {key} {value!r}", key="--only",
                                hint=suggest(value, known))
    chosen = {r.key for r in runs
              if any(all(FIELDS[k](r) == v for k, v in one.items()) for one in filters)}
    if not chosen:
        raise UserError("no stage run matches every key of one --only",
                        key="--only", hint="`harness run --dry-run` lists the stage runs")
    by_key = {r.key: r for r in runs}
    todo = list(chosen)
    while todo:
        for up in by_key[todo.pop()].upstream_keys():
            if up not in chosen:
                chosen.add(up)
                todo.append(up)
    return chosen
