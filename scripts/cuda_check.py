"""The CUDA check: everything that only a GPU can tell, in one command and one table.

    python scripts/cuda_check.py [--write reports/benchmarks.md] [--only NAME ...]

On a machine with a CUDA GPU it runs, each with its own time limit so that the whole stays
within about 8 minutes on one GPU:

- the tests marked ``cuda`` (tests/test_cuda.py: training, bfloat16 autocast, bit-exact resume
  and peak-memory metering on the device), with ``HARNESS_REQUIRE_CUDA=1`` so that none of them
  can pass by being skipped;
- the ``smoke`` profile of every offline suite, where ``device: auto`` means the GPU, checking
  afterwards that every finished stage run recorded a CUDA device;
- the transfer smoke profile with two stage runs sharing the GPU (``-j 2 --runs-per-gpu 2``);
- the benchmarks that have CUDA cases (racecar's and inversion's step ratios against their
  FLOP ratios, stacked replicates where present), which write their own tables.

Without a visible GPU it stops at once with exit 2: a CUDA check that "passes" on a CPU is
worse than none. It prints one table (step, result, seconds, what it found); ``--write`` puts
that table, with the device's name and the date, into a file (a section of its own, replaced
when run again). Exit 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## CUDA check"
#: suites whose smoke profile needs files a user downloads (``*_files``) or CIFAR
NOT_OFFLINE = re.compile(r"(_files|cifar)\.yaml$")


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    home: Path | None = None  # a harness home whose runs must all have trained on CUDA


@dataclass
class Outcome:
    step: Step
    ok: bool
    seconds: float
    detail: str


def harness_exe() -> str:
    return str(Path(sys.executable).with_name("harness"))


def steps(scratch: Path, suites_dir: Path = ROOT / "suites") -> list[Step]:
    """What the check runs, in order; ``scratch`` holds each run's own harness home."""
    py = sys.executable
    out = [Step("tests marked cuda", [py, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"],
                120, {"HARNESS_REQUIRE_CUDA": "1"})]
    for suite in sorted(suites_dir.glob("*.yaml")):
        if NOT_OFFLINE.search(suite.name):
            continue
        home = scratch / suite.stem
        out.append(Step(f"smoke {suite.stem}", [harness_exe(), "run", str(suite), "--profile",
                                                "smoke", "--quiet", "--home", str(home)],
                        150, home=home))
    home = scratch / "shared_gpu"
    out.append(Step("2 runs on one GPU", [harness_exe(), "run", str(suites_dir / "transfer.yaml"),
                                          "--profile", "smoke", "--quiet", "--home", str(home),
                                          "-j", "2", "--runs-per-gpu", "2"], 150, home=home))
    benches = [str(p) for p in sorted((ROOT / "tests" / "benchmarks").glob("test_*_bench.py"))]
    out.append(Step("benchmarks (cuda cases)", [py, "-m", "pytest", "-q", *benches,
                                                "--benchmark-only", "--benchmark-enable", "-k",
                                                "cuda"], 240))
    return out


def devices_of(home: Path) -> set[str]:
    """The devices the finished stage runs of a harness home trained on."""
    from mlflow.tracking import MlflowClient  # only once a step has run: a slow import

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "attributes.status = 'FINISHED'", max_results=5000)
    return {r.data.params["measured.device"] for r in runs if "measured.device" in r.data.params}


def run_step(step: Step) -> Outcome:
    start = time.perf_counter()
    try:
        done = subprocess.run(step.argv, cwd=ROOT, env={**os.environ, **step.env},
                              capture_output=True, text=True, timeout=step.timeout)
    except subprocess.TimeoutExpired:
        return Outcome(step, False, time.perf_counter() - start, f"over {step.timeout:.0f} s")
    seconds = time.perf_counter() - start
    lines = (done.stdout + done.stderr).strip().splitlines()
    detail = lines[-1] if lines else ""
    ok = done.returncode == 0
    if ok and step.home is not None:
        devices = devices_of(step.home)
        ok = bool(devices) and all(d.startswith("cuda") for d in devices)
        detail = f"devices: {', '.join(sorted(devices)) or 'none recorded'}"
    return Outcome(step, ok, seconds, detail)


def table(outcomes: list[Outcome]) -> str:
    rows = ["| step | result | seconds | detail |", "|---|---|---|---|"]
    for o in outcomes:
        detail = o.detail.replace("|", "/")[:160]
        rows.append(f"| {o.step.name} | {'ok' if o.ok else 'FAILED'} | {o.seconds:.0f} | {detail} |")
    return "\n".join(rows)


def write_section(path: Path, device: str, text: str, when: datetime.date) -> None:
    """Put the table into ``path`` as its own section, replacing the one a previous check
    wrote (from its heading to the next ``## `` heading)."""
    old = path.read_text() if path.exists() else ""
    section = f"{SECTION}\n\nOn {device}, {when.isoformat()} (`python scripts/cuda_check.py`).\n\n{text}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(section + "\n", old) if pattern.search(old) else \
        (old.rstrip() + "\n\n" if old else "") + section
    path.write_text(new)


def gpu_name() -> str | None:
    import torch  # the check's own question; the import is most of its start-up

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="also write the table into this file")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only the steps whose name contains one of these words")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = gpu_name()
    if device is None:
        print("cuda_check: no CUDA GPU is visible here; this check runs on a GPU machine and "
              "never passes on a CPU", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cuda-check-") as scratch:
        todo = [s for s in steps(Path(scratch))
                if not args.only or any(word in s.name for word in args.only)]
        outcomes = []
        for step in todo:
            outcomes.append(run_step(step))
            print(f"{outcomes[-1].step.name}: {'ok' if outcomes[-1].ok else 'FAILED'}",
                  file=sys.stderr, flush=True)
    text = table(outcomes)
    print(text)
    if args.write:
        write_section(args.write, device, text, datetime.date.today())
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
