# expect: plugin_import_error.py, line 4: ModuleNotFoundError: No module named 'harness_some_package_that_is_not_installed'
"""A plugin whose import fails, as a half-installed package would: it needs a missing module."""

import harness_some_package_that_is_not_installed  # noqa: F401
