# expect: plugin_hook_wrong_argument
"""A hook implementation that asks for an argument its hook spec does not provide."""

from harness.api import hookimpl


@hookimpl
def harness_register_methods(registry):
    registry("never", object)
