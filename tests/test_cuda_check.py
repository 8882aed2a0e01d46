"""scripts/cuda_check.py's CPU-side parts: what it would run, its table, its section in a
report file, its refusal without a GPU, and the ``cuda`` marker's skip-or-fail rule (in
tests/conftest.py)."""

from __future__ import annotations

import datetime
import sys

import pytest

from conftest import REQUIRE_CUDA, ROOT, pytest_runtest_setup

sys.path.insert(0, str(ROOT / "scripts"))
import cuda_check  # noqa: E402  a script, not a package module


def test_it_covers_the_tests_every_offline_suite_a_shared_gpu_and_the_benchmarks(tmp_path):
    names = [s.name for s in cuda_check.steps(tmp_path)]
    offline = sorted(p.stem for p in (ROOT / "suites").glob("*.yaml")
                     if not cuda_check.NOT_OFFLINE.search(p.name))
    assert names[0] == "tests marked cuda" and names[-1] == "benchmarks (cuda cases)"
    assert [n.removeprefix("smoke ") for n in names if n.startswith("smoke ")] == offline
    assert "semisupervised_files" not in " ".join(names) and "quickstart" in " ".join(names)
    shared = next(s for s in cuda_check.steps(tmp_path) if s.name == "2 runs on one GPU")
    assert shared.argv[-4:] == ["-j", "2", "--runs-per-gpu", "2"] and shared.home is not None
    tests = cuda_check.steps(tmp_path)[0]
    assert tests.env == {"HARNESS_REQUIRE_CUDA": "1"}


def test_the_table_and_its_section_replace_the_previous_check(tmp_path):
    step = cuda_check.Step("smoke quickstart", ["x"], 1)
    text = cuda_check.table([cuda_check.Outcome(step, True, 12.3, "devices: cuda:0"),
                             cuda_check.Outcome(step, False, 1, "a | b")])
    assert text.splitlines()[2] == "| smoke quickstart | ok | 12 | devices: cuda:0 |"
    assert text.splitlines()[3] == "| smoke quickstart | FAILED | 1 | a / b |"
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## Racecar\n\nold numbers\n")
    day = datetime.date(2026, 12, 7)
    cuda_check.write_section(report, "NVIDIA H100", "first", day)
    cuda_check.write_section(report, "NVIDIA H200", "second", day)
    body = report.read_text()
    assert body.count(cuda_check.SECTION) == 1 and "second" in body and "first" not in body
    assert "## Racecar\n\nold numbers" in body and "On NVIDIA H200, 2026-12-07" in body


NO_GPU = pytest.mark.skipif(cuda_check.gpu_name() is not None, reason="a GPU is visible")


@NO_GPU
def test_without_a_gpu_it_refuses_with_exit_2(capsys):
    assert cuda_check.main([]) == 2
    out, err = capsys.readouterr()
    assert "no CUDA GPU is visible" in err and out == ""


class Item:
    """As much of a pytest item as the marker rule reads."""

    def __init__(self, marker: str | None):
        self.marker = marker

    def get_closest_marker(self, name: str):
        return object() if name == self.marker else None


@NO_GPU
def test_a_cuda_test_without_a_gpu_is_skipped_and_under_the_check_fails(monkeypatch):
    monkeypatch.delenv(REQUIRE_CUDA, raising=False)
    with pytest.raises(pytest.skip.Exception):
        pytest_runtest_setup(Item("cuda"))
    monkeypatch.setenv(REQUIRE_CUDA, "1")
    with pytest.raises(pytest.fail.Exception, match="no CUDA GPU is visible"):
        pytest_runtest_setup(Item("cuda"))
    assert pytest_runtest_setup(Item("slow")) is None  # other tests are not its business
