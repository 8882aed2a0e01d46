"""One stage run in parts, each findable by its name.

- ``build``: the stage's data by role, the network, and the method with its context (the one
  place a method is constructed: the engine, frozen references and the preflight all use it);
- ``streams``: the named batch streams a method declares, each with its own seeded order;
- ``updates``: named optimizers with their schedules, and ``update()``, the one place an
  optimizer steps;
- ``loop``: the epoch loop (steps, per-epoch metrics, the finite check, evaluators);
- ``checkpoint``: resume state, the final checkpoint, and rebuilding an upstream method from it.

Nothing here talks to MLflow; ``harness.engine`` puts the parts together for an executor.
"""
