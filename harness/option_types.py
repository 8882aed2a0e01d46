"""Option values checked against the annotations of a plugin's signature, before anything runs.

A suite's ``smoothing: "0.1"`` (a string) used to pass every check and fail half-way through a
grid with a TypeError from torch. The annotation an author writes anyway (``smoothing: float =
0.1``) says what the option takes, so the suite reader refuses a value of another type with the
file, the key, the expected type and the value. Only what YAML can give is understood: ``int``,
``float`` (an integer is a number too), ``bool``, ``str``, ``Literal[...]``, ``None``, unions
(``X | None``, ``Optional[X]``), lists and tuples of those, and dicts; any other annotation (a
class, ``Any``, a string that does not evaluate) accepts every value, and ranges are the
plugin's own to refuse (a ``UserError`` from ``__init__``).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

__all__ = ["UNCHECKED", "annotation_of", "matches", "describe"]

#: what an annotation the checks do not understand resolves to: every value is accepted
UNCHECKED = object()


def annotation_of(param: inspect.Parameter, owner) -> Any:
    """The parameter's annotation as a type, evaluated in its module when it is a string
    (``from __future__ import annotations``); ``UNCHECKED`` when there is none or it does
    not evaluate."""
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return UNCHECKED
    if isinstance(ann, str):
        namespace = getattr(inspect.unwrap(owner), "__globals__", None) or {}
        try:
            ann = eval(ann, dict(namespace), {"typing": typing})  # noqa: S307  the plugin's own code
        except Exception:  # noqa: BLE001  a name only a type checker sees
            return UNCHECKED
    if param.default is None:  # `x: float = None`: None is meant, whatever the annotation says
        try:
            ann = typing.Optional[ann]
        except TypeError:  # not a type typing can combine: left as it is
            pass
    return ann


def _args(ann) -> tuple:
    return typing.get_args(ann)


def matches(ann, value) -> bool:
    """Whether ``value`` (as YAML gives it) is of the type ``ann`` describes."""
    if ann is UNCHECKED or ann is Any or ann is object:
        return True
    origin = typing.get_origin(ann)
    if ann is None or ann is type(None):
        return value is None
    if origin is typing.Union or origin is types.UnionType:
        return any(matches(a, value) for a in _args(ann))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in _args(ann))
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if origin in (list, tuple) or ann in (list, tuple):
        return _matches_sequence(ann, value)
    if origin is dict or ann is dict:
        args = _args(ann)
        return isinstance(value, dict) and (not args or all(
            matches(args[0], k) and matches(args[1], v) for k, v in value.items()))
    return True  # a class, a protocol, a callable: not the suite reader's to judge


def _matches_sequence(ann, value) -> bool:
    """A list (YAML has no tuples) whose items match: ``list[X]``, ``tuple[X, ...]`` or the
    fixed ``tuple[X, Y]``."""
    if not isinstance(value, (list, tuple)):
        return False
    args = _args(ann)
    if not args:
        return True
    if typing.get_origin(ann) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(value) == len(args) and all(matches(a, v) for a, v in zip(args, value))
    return all(matches(args[0], v) for v in value)


def describe(ann) -> str:
    """The type in a suite author's words: "a number", "one of 'sum', 'mean'"."""
    origin = typing.get_origin(ann)
    if ann is None or ann is type(None):
        return "null"
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(describe(a) for a in _args(ann))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in _args(ann))
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "text",
              list: "a list", tuple: "a list", dict: "a mapping"}
    if ann in simple:
        return simple[ann]
    if origin in (list, tuple):
        args = [a for a in _args(ann) if a is not Ellipsis]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        if len(set(args)) == 1:
            return f"a list of {plural.get(args[0]) or describe(args[0])}"
        return f"a list of {len(args)}: " + ", ".join(describe(a) for a in args)
    if origin is dict:
        return "a mapping"
    return getattr(ann, "__name__", str(ann))
