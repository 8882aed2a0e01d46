"""MethodContext.generator: a method's own random stream that the engine checkpoints, so a run
resumed after a kill draws what the uninterrupted run would have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.api import Method, MethodContext, Split
from harness.testing import check_method


def ctx_for(seed: int) -> MethodContext:
    return MethodContext(stage="A", seed=seed, epochs=1, num_classes=2, input_shape=(2,),
                         train=Split(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


def test_one_generator_per_name_seeded_from_the_seed_and_the_name():
    ctx = ctx_for(3)
    assert ctx.generator("a") is ctx.generator("a")
    a = torch.rand(4, generator=ctx.generator("a"))
    b = torch.rand(4, generator=ctx.generator("b"))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.rand(4, generator=ctx_for(3).generator("a")))
    assert not torch.equal(a, torch.rand(4, generator=ctx_for(4).generator("a")))


def test_seed_for_is_a_63_bit_function_of_seed_and_name():
    seeds = {ctx_for(s).seed_for(n) for s in range(5) for n in ("x/1/2", "x/12", "y")}
    assert len(seeds) == 15 and all(0 <= s < 2**63 for s in seeds)
    assert ctx_for(1).seed_for("x") == ctx_for(1).seed_for("x")


def test_restored_generators_continue_where_they_were_saved():
    ctx = ctx_for(0)
    torch.rand(5, generator=ctx.generator("noise"))
    states = ctx.generator_states()
    after = torch.rand(3, generator=ctx.generator("noise"))
    fresh = ctx_for(0)
    fresh.restore_generators(states)
    assert torch.equal(torch.rand(3, generator=fresh.generator("noise")), after)


class _Noisy(Method):
    """Cross-entropy plus a random term: its losses depend on where its stream stands."""

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.generator = self.pick_generator(ctx)

    def pick_generator(self, ctx):
        return ctx.generator("noise")

    def loss(self, batch):
        noise = torch.rand((), generator=self.generator)
        return {"ce": F.cross_entropy(self.model(batch.x), batch.y) * (1 + noise)}


class _PrivateGenerator(_Noisy):
    """The defect issue 29 found in aux_heads: a generator no checkpoint holds."""

    def pick_generator(self, ctx):
        return torch.Generator().manual_seed(ctx.seed)


def test_a_method_on_ctx_generator_passes_the_kit():
    assert set(check_method(_Noisy, on_fail="warn").values()) == {None}


def test_the_kit_catches_a_private_generator_on_resume_and_only_there():
    with pytest.warns(UserWarning, match="check_resume_equivalence"):
        result = check_method(_PrivateGenerator, on_fail="warn")
    assert "ctx.generator" in result.pop("check_resume_equivalence")
    assert set(result.values()) == {None}
