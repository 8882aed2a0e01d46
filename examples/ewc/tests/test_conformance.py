"""Conformance of ewc with the harness's contracts, its penalty, and its suite through the CLI."""

from pathlib import Path

import torch

from harness.testing import method, parametrize_with_checks

from ewc import EWC

SUITE = Path(__file__).resolve().parents[1] / "suites" / "ewc.yaml"


# refs: the method of each upstream stage EWC reads (a name, or {"name": ..., options}); the kit
# trains it first. Task A's data role (`role`, default "A") gets the kit's data, as every role.
@parametrize_with_checks([method(EWC, refs={"anchor": "std"})])
def test_conformance(plugin, check):
    check(plugin)


def test_suite_runs(run_suite):
    assert run_suite(SUITE, "--profile", "smoke") == 0


def test_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    from harness.testing.method_checks import MethodUnderTest

    m = MethodUnderTest(EWC, {"role": "target"}, refs={"anchor": {"name": "std"}}).build(
        MethodUnderTest(EWC, {"role": "target"}, refs={"anchor": {"name": "std"}}).data())
    for i, (_, p) in enumerate(m.model.named_parameters()):
        p.data.copy_(getattr(m, f"anchor_{i}"))
    x = torch.rand(4, 1, 8, 8)
    from harness.api import Batch
    batch = Batch(x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    assert float(m.loss(batch)["ewc"]) == 0.0
    with torch.no_grad():
        next(m.model.parameters()).add_(1.0)
    assert float(m.loss(batch)["ewc"]) > 0
