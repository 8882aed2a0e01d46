"""What only a CUDA GPU can check (marker ``cuda``): training on the device, bfloat16 autocast,
bit-exact resume and peak-memory metering there.

Without a GPU these tests are skipped; with ``HARNESS_REQUIRE_CUDA=1`` (which
scripts/cuda_check.py sets) a missing GPU fails them instead, so that the check cannot pass on
a CPU. The suites' smoke profiles on CUDA (every method, with its upstream stages) are the
check script's other part.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.engine import run_stage
from harness.plugins import Plugins
from test_engine import task
from test_updates import final_state

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def plugins():
    return Plugins(["harness_test_plugins"])


@pytest.mark.parametrize("method", [{"name": "std"}, {"name": "racecar"}, {"name": "srip"}])
def test_a_method_trains_on_the_gpu(tmp_path, plugins, method):
    result = run_stage(task(tmp_path, method, epochs=3, device="cuda"), plugins)
    assert result.ok, result.error
    assert result.params["device"].startswith("cuda")
    losses = [row["loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_bfloat16_autocast_trains_on_the_gpu(tmp_path, plugins):
    result = run_stage(task(tmp_path, epochs=2, device="cuda", amp=True), plugins)
    assert result.ok, result.error
    assert result.params["amp"] == "bfloat16"
    assert all(math.isfinite(row["loss"]) for row in result.history)


class _Stop(BaseException):
    """Ends a stage run between two epochs, after the resume state was saved."""


def _resumable(tmp_path, folder: str):
    t = task(tmp_path / folder, epochs=4, device="cuda")
    t.resume_dir, t.checkpoint_every = str(tmp_path / folder / "resume"), 0.0
    return t


def test_resume_on_the_gpu_is_bit_exact(tmp_path, plugins):
    """The MI network (no convolutions, so no cudnn.benchmark algorithm choice between the two
    runs), stopped after epoch 2 and resumed: the same losses and weights as the run that was
    never stopped."""
    straight = run_stage(_resumable(tmp_path, "a"), plugins)

    def stop(epoch, metrics):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run_stage(_resumable(tmp_path, "b"), plugins, on_epoch=stop)
    again = _resumable(tmp_path, "b")
    again.resume = True
    resumed = run_stage(again, plugins)
    assert straight.ok and resumed.ok and resumed.params["resumed_from_epoch"] == 2
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    a, b = final_state(straight), final_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_peak_gpu_memory_is_metered(tmp_path, plugins):
    result = run_stage(task(tmp_path, epochs=1, device="cuda"), plugins)
    assert result.ok, result.error
    assert result.summary["peak_cuda_mb"] > 0
    assert final_state(result)  # the checkpoint loads back on the CPU
