"""YAML suites: reading, validation into typed objects, profiles, and expansion into stage runs.

A suite declares *settings* (one, or several under ``settings:``), each with a grid of methods x
datasets x architectures, a number of seeds and a DAG of stages; expansion turns that into
``StageRun``s. Every error names the file, the key path and a hint; nothing here imports torch.

The parts: ``yaml_file`` reads the file, ``schema`` says what a suite may hold and checks each
value, ``load`` validates a suite into ``model``'s typed objects (with ``report_spec`` for the
``report:`` key, ``expectations`` for ``expect_failure:`` and ``defaults`` for what a suite
leaves out), ``expansion`` turns it into stage
runs, and ``plugin_check`` checks its names and options against the installed plugins.
"""

from __future__ import annotations

from .defaults import SuiteDefaults
from .expansion import derive_seed, expand, own_architecture, stage_axes, stage_rows, topological
from .load import load_suite, parse_suite
from .model import DataRef, PluginRef, Setting, StageDecl, StageRun, Suite
from .plugin_check import check_plugins
from .report_spec import ReportSpec, Sweep
from .schema import AXES, RUN_DEFAULTS
from .yaml_file import read_yaml

__all__ = ["AXES", "RUN_DEFAULTS", "DataRef", "PluginRef", "ReportSpec", "Setting", "StageDecl",
           "StageRun", "Suite", "SuiteDefaults", "Sweep", "check_plugins", "derive_seed",
           "expand", "load_suite", "own_architecture", "parse_suite", "read_yaml", "stage_axes",
           "stage_rows", "topological"]
