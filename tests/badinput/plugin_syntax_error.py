# expect: plugin_syntax_error
"""A plugin with a syntax error (a missing colon)."""

def harness_register_methods(register)
    register("x", object)
