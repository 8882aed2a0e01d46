"""What a method under test asks its context for that the kit was not given: the upstream
stages it reads through ``refs:`` (``ctx.upstream``) and the data roles it reads
(``ctx.data``).

The kit cannot know them from a signature: EWC's anchor is whichever name its ``anchor``
option says. So the method is built with mappings that note the names looked up and missing;
a missing data role the kit simply supplies (its tiny data, as for every role), a missing
reference it names in the message that says how to give one (``refs={"anchor": "std"}``),
and ``harness plugins --check`` gives it the suite defaults' baseline method, as a suite
would name an upstream stage.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Asked", "ref_specs", "refs_message"]


class Asked(dict):
    """A dict that notes every key looked up (``in``, ``[]``, ``get``) that it lacks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.missing: list = []

    def _note(self, key) -> bool:
        found = dict.__contains__(self, key)
        if not found and key not in self.missing:
            self.missing.append(key)
        return found

    def __contains__(self, key) -> bool:
        return self._note(key)

    def __getitem__(self, key):
        self._note(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return dict.__getitem__(self, key) if self._note(key) else default


def ref_specs(refs, example: str) -> dict[str, dict[str, Any]]:
    """``refs`` as the kit takes them (ref name -> the method of that upstream stage: its name,
    or a spec with ``name`` and options), each made a spec; anything else is refused with the
    forms that work (``example``: a method name to show)."""
    if refs is None:
        return {}
    forms = f"{{'prev': {example!r}}} or {{'prev': {{'name': {example!r}, OPTION: VALUE}}}}"
    if not isinstance(refs, dict):
        raise TypeError(f"refs maps the names a method reads from ctx.upstream to the method of "
                        f"that upstream stage, e.g. {forms}; got {refs!r}")
    out = {}
    for name, spec in refs.items():
        if isinstance(spec, str):
            out[name] = {"name": spec}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            out[name] = dict(spec)
        else:
            raise TypeError(f"refs[{name!r}] is the method of the upstream stage: a name or a "
                            f"spec with `name`, e.g. {forms}; got {spec!r}")
    return out


def refs_message(label: str, asked: list, example: str | None) -> str:
    """How to give a method the references it looked up and was not given."""
    names = ", ".join(f"ctx.upstream[{n!r}]" for n in asked)
    given = ", ".join(f"{n!r}: {example or 'METHOD'!r}" for n in asked)
    return (f"{label} reads {names}: an upstream stage named under `refs:` in a suite. Give the "
            f"kit one to train first: method({label}, refs={{{given}}}, ...) or "
            f"check_method({label}, refs={{{given}}})")
