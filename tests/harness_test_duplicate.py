"""Registers a method name the built-ins already own: loading it must fail naming both plugins."""

from harness.api import hookimpl


@hookimpl
def harness_register_methods(register):
    from plugins.methods.std import Std

    register("std", Std)
