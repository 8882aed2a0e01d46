"""How the report writes numbers and tables: a dash for what is missing, mean ± std (n) with
"n of N" when runs are missing, p-values in two significant digits, markdown tables with the
cell separator escaped."""

from __future__ import annotations

import math
import re

from ..stats import Summary, p_text

DASH = "–"


def fin(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if fin(x) else DASH


def cell(s: Summary, expected: int, fmt: str = ".3f") -> str:
    if s.n == 0:
        return f"missing (0/{expected})" if expected else ""
    n = f"{s.n}" if s.n == expected else f"{s.n} of {expected}"
    if s.n == 1:
        return f"{num(s.mean, fmt)} ({n})"
    return f"{num(s.mean, fmt)} ± {num(s.std, fmt)} ({n})"


def ci(s: Summary, fmt: str = ".3f") -> str:
    return f"[{num(s.ci_low, fmt)}, {num(s.ci_high, fmt)}]" if fin(s.ci_low) else DASH


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return out + [""]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def p_value(p: float) -> str:
    return p_text(p, missing=DASH) if fin(p) else DASH


def metric_title(metric: str) -> str:
    return metric.removeprefix("final_").replace("_", " ")

