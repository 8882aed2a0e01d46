"""What the built-in plugins give a suite that leaves it out (``harness_suite_defaults``).

The core names no plugin; these are the choices the harness has always made: the ``accuracy``
evaluator, the ``std`` method as the baseline row of the cost table, ``test_acc`` as the
headline metric of every table, claim and reference (headed "test accuracy"), and the
``inline`` executor for one job at a time, ``processes`` for several, and the plugins the
suite of a package ``harness new`` writes runs with (std against the new one on digits,
small_cnn or, for a new data set's flat vectors, mi_mlp; accuracy). A suite that writes
``evaluate:`` and ``report: {baseline: ..., metric: ...}`` out does not use them; every suite
in suites/ does. No other module of this package imports this one, so the code digests of the
stage runs' plugins do not include it.
"""

from harness.api import hookimpl


@hookimpl
def harness_suite_defaults():
    return {
        "evaluate": ["accuracy"],
        "baseline": "std",
        "metric": "test_acc",
        "metric_titles": {"test_acc": "test accuracy"},
        "executors": {"one": "inline", "several": "processes"},
        "scaffold": {"baseline": "std", "dataset": "digits",
                     "dataset_note": "scikit-learn's digits (offline)", "architecture": "small_cnn",
                     "vector_architecture": "mi_mlp", "evaluator": "accuracy",
                     "metric": "test_acc"},
    }
