"""A plugin-based benchmark harness for training methods that claim more transferable features.

The core (this package) knows no dataset, architecture or method by name: every one of them is a
plugin registered through the ``harness`` entry-point group. Plugins import from ``harness.api``.
"""

__version__ = "0.1.0"
