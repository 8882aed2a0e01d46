"""``python -m harness``: the same as the ``harness`` console script."""

from .cli import main

raise SystemExit(main())
