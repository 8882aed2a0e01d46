"""Reading a suite file: UTF-8 YAML of at most ``MAX_SUITE_BYTES``, parsed with YAML 1.2's
booleans, no key given twice in one mapping, nested at most ``MAX_DEPTH`` levels and at most
``MAX_NODES`` values (aliases counted), every failure a ``UserError`` that names the file and,
where YAML knows it, the line."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..errors import UserError
from .schema import MAX_DEPTH, MAX_NODES, MAX_SUITE_BYTES


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping: PyYAML keeps the last silently (``seeds: 2`` then
    ``seeds: 3`` ran 3 seeds), so which value a suite meant is unknowable."""

    def __init__(self, key, first: int, second: int):
        super().__init__(f"key {key!r} twice")
        self.key, self.first, self.second = key, first, second


class SuiteLoader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's booleans (only true and false), refusing a key given
    twice in one mapping.

    YAML 1.1 also reads on/off/yes/no as booleans, so an evaluator's ``on: [target, source]``
    would arrive as the key True, and a data set named ``no`` as False."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:  # before merges: a `<<` key may be overridden
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the base constructor refuses it
                    continue
        return super().construct_mapping(node, deep=deep)


SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError("no such suite file", file=str(path),
                        hint="give the path of a YAML suite, e.g. suites/quickstart.yaml")
    data = _parse_yaml(_suite_text(path), path)
    if not isinstance(data, dict):
        raise UserError("a suite is a YAML mapping with at least `suite:` and `grid:` or `stages:`",
                        file=str(path), hint="start the file with `suite: NAME` at the left margin")
    _check_size(data, path)
    return data


def _suite_text(path: Path) -> str:
    """The file as text: UTF-8 (YAML's own encoding), of a size a suite can have."""
    if path.stat().st_size > MAX_SUITE_BYTES:
        raise UserError(f"is {path.stat().st_size} bytes; a suite is at most {MAX_SUITE_BYTES}",
                        file=str(path), hint="is this the suite file?")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})",
                        file=str(path), key=f"line {line}",
                        hint="save the suite as UTF-8 text") from None


def _check_size(data, path: Path) -> None:
    """Refuse documents nested deeper, or (through aliases) larger, than any suite: walking
    them later would exhaust the stack or the memory."""
    stack, nodes = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            what = f"nested more than {MAX_DEPTH} levels deep" if depth > MAX_DEPTH else \
                f"more than {MAX_NODES} values (counting what aliases repeat)"
            raise UserError(f"the YAML document is {what}", file=str(path),
                            hint="a suite needs a few levels of mappings and lists")
        children = value.values() if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _parse_yaml(text: str, path: Path):
    try:
        return yaml.load(text, Loader=SuiteLoader)
    except RecursionError:
        raise UserError(f"the YAML document is nested more than {MAX_DEPTH} levels deep",
                        file=str(path), hint="a suite needs a few levels of mappings and lists") from None
    except DuplicateKey as exc:
        where = (f"lines {exc.first} and {exc.second}" if exc.first != exc.second
                 else f"line {exc.first}")
        raise UserError(f"key {_short_key(exc.key)} is given twice in one mapping, on {where}",
                        file=str(path), key=f"line {exc.second}",
                        hint="YAML would keep only the last one: remove one, or merge them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"is not valid YAML: {problem}", file=str(path), key=where,
                        hint="check indentation and quoting there") from None



def _short_key(key) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."
