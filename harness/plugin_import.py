"""Importing a plugin module named on the command line (``--plugin``, ``HARNESS_PLUGINS``) or
by an entry point, and what its failure says.

A plugin that fails to import is the author's code at some line: the message names that file
and line and the error itself (a NameError, a missing dependency), so the author need not
rerun Python by hand to find it. Only a dotted name that no folder holds gets the hint about how
to name a module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

from .errors import UserError

__all__ = ["import_spec", "import_failure", "is_file_spec"]

_CORE = Path(__file__).resolve().parent  # the harness package: the loader, not the plugin


def import_spec(spec: str):
    """The module ``spec`` names: a ``.py`` file, or a dotted module path."""
    return _import_file(spec) if is_file_spec(spec) else _import_dotted(spec)


def import_failure(what: str, exc: BaseException, hint: str | None = None) -> UserError:
    """``what`` (e.g. "plugin module 'x'") failed to import with ``exc``: the error, where in
    the plugin's code it happened, and what to do."""
    where = _where(exc)
    error = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    at = f" at {where[0]}, line {where[1]}" if where else ""
    if hint is None:
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        hint = (f"install the module it imports ({missing!r}), or fix that import" if missing
                else "fix the plugin's code there" + (f"; `python {where[0]}` shows the whole "
                                                     "traceback" if where else ""))
    return UserError(f"{what} failed to import{at}: {type(exc).__name__}: {error}", hint=hint)


def _where(exc: BaseException) -> tuple[str, int] | None:
    """The plugin's own line that raised (or led to) ``exc``: a syntax error's position, else
    the first frame of the traceback outside the harness package and importlib's machinery."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return exc.filename, exc.lineno
    for frame in traceback.extract_tb(exc.__traceback__):
        name = frame.filename
        path = Path(name).resolve()
        if name.startswith("<") or path.is_relative_to(_CORE) or "importlib" in path.parts:
            continue
        return name, frame.lineno or 0
    return None


def is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def _import_file(spec: str):
    """Import a plugin from a ``.py`` file, as a module named after the file."""
    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"plugin file {spec!r} does not exist", hint="give the path of a .py file")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise UserError(f"plugin file {spec!r}: a module named {name!r} is already imported "
                        f"({getattr(loaded, '__file__', 'built in')})", hint="rename the file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"plugin file {spec!r} cannot be imported", hint="give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_dotted(dotted: str):
    """``import dotted``; the current folder is searched after everything else, so that a
    module beside the suite works with the ``harness`` command as with ``python -m``."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        here = str(Path.cwd())
        if exc.name != dotted.split(".")[0] or here in sys.path:
            raise
    sys.path.append(here)
    return importlib.import_module(dotted)


