# expect: plugin_hook_typo
"""A hook implementation whose name matches no hook spec: harness_register_method, not _methods."""

from harness.api import hookimpl


@hookimpl
def harness_register_method(register):
    register("never", object)
