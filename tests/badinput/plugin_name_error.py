# expect: plugin_name_error.py, line 8: NameError: name 'Methd' is not defined
"""A plugin with a typo at module level, which only running it finds: the message names the
file and the line, not only the error."""

from harness.api import Method, hookimpl


class Reg(Methd):
    pass


@hookimpl
def harness_register_methods(register):
    register("reg", Reg)
