"""A hook implementation whose name matches no hook spec (a typo of harness_register_methods)."""

from harness.api import hookimpl


@hookimpl
def harness_register_method(register):
    register("never", object)
