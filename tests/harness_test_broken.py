"""A plugin whose import fails, as a half-installed third-party package would."""

raise ImportError("this plugin needs a package that is not installed")
