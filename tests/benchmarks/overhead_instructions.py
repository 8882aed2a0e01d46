"""The harness's overhead counted in instructions (valgrind's callgrind), not timed.

Why beside the timed benchmark (test_overhead_bench.py): on the shared 2-core machine a whole
300-epoch run of the MI network moves by +-25% from one run to the next, and the median of 16
alternating pairs still moves by +-5% between invocations, as much as the goal it is meant to
check. Instructions executed do not depend on the neighbours, so they show what the harness adds
to each step and each run (they do not show cache or memory-placement effects; the timed
benchmark does).

Usage (needs valgrind with its headers and a C compiler; takes a few minutes):

    python tests/benchmarks/overhead_instructions.py

Each variant (the bare loop gathering with ``x[idx]``, the bare loop gathering with
``index_select`` as the streams do, and the harness's stage run) runs in its own process under
callgrind, with instrumentation switched on only around the measured run, for two epoch counts:
the difference gives the instructions per epoch, the rest is the per-run cost.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPER_C = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""
VARIANTS = ("bare_index", "bare_index_select", "harness")
EPOCHS = (10, 40)
STEPS_PER_EPOCH = 7  # ib12's 3,277 training samples in batches of 512


def helper(folder: Path) -> Path:
    """callgrind's client requests are C macros; a three-line library makes them callable."""
    src, lib = folder / "cg.c", folder / "libcg.so"
    src.write_text(HELPER_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    return lib


def child(variant: str, epochs: int, lib: str) -> None:
    """Build everything, warm up with two epochs, then count one run of ``epochs``."""
    sys.path.insert(0, str(HERE))
    import test_overhead_bench as bench

    cg = ctypes.CDLL(lib)
    plugins, data, folder = bench.prepare(tempfile.mkdtemp(), Path(tempfile.mkdtemp()))
    runs = {"bare_index": lambda: bench.bare_loop(plugins, data, True, "index"),
            "bare_index_select": lambda: bench.bare_loop(plugins, data, True, "index_select"),
            "harness": lambda: bench.stage_run(plugins, data, folder)}
    for n in (2, epochs):
        bench.EPOCHS = n
        bench.RUN["epochs"] = n
        if n == epochs:
            cg.cg_start()
        runs[variant]()
    cg.cg_stop()


def count(variant: str, epochs: int, lib: Path, folder: Path) -> int:
    out = folder / f"cg.{variant}.{epochs}"
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, __file__, "--child", variant,
                    str(epochs), str(lib)], check=True, capture_output=True,
                   env={**os.environ, "HARNESS_LOG_MODEL": "off"})
    dumped = sorted(folder.glob(f"cg.{variant}.{epochs}.*"))  # the part CALLGRIND_DUMP_STATS wrote
    text = dumped[0].read_text() if dumped else out.read_text()
    return int(re.search(r"^totals: (\d+)", text, re.M).group(1))  # "summary:" may say 0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lib = helper(folder)
        counts = {(v, e): count(v, e, lib, folder) for v in VARIANTS for e in EPOCHS}
    lo, hi = EPOCHS
    per_epoch = {v: (counts[v, hi] - counts[v, lo]) / (hi - lo) for v in VARIANTS}
    per_run = {v: counts[v, lo] - lo * per_epoch[v] for v in VARIANTS}
    run_300 = {v: 300 * per_epoch[v] + per_run[v] for v in VARIANTS}
    for v in VARIANTS:
        print(f"{v:18s} {per_epoch[v] / STEPS_PER_EPOCH / 1e3:8.1f} k instructions a step, "
              f"{per_run[v] / 1e6:7.1f} M a run besides its epochs")
    for top, base in (("bare_index", "bare_index_select"), ("harness", "bare_index_select"),
                      ("harness", "bare_index")):
        print(f"{top} / {base}, a 300-epoch run: {run_300[top] / run_300[base]:.4f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
