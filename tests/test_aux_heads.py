"""Paper 001: the aux_heads method, the head_swap / feature_correlation evaluators and the ResNets.

Checked against hand-built networks whose answers are known: permutation features with heads
that are right only for their own network, labels renumbered by hand, numpy's rot90 and
corrcoef, a known channel permutation for the Hungarian matching.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Batch, Batches, DataBundle, EvalContext, MethodContext, Split, UserError
from plugins.architectures.resnet import resnet20, resnet56, resnet_small
from plugins.evaluators.compatibility import (CorrelationAccumulator, FeatureCorrelation, HeadSwap,
                                              matched_correlation)
from plugins.methods.aux_heads import (AuxHeads, common_targets, head_copy, rotate, rotation_batch,
                                       split_index)


def pair(a, b):
    """The two streams of a joint step: network a's batch and network b's."""
    return Batches({"a": a, "b": b})


def linear_net(d: int = 4, c: int = 4) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(d, d, bias=False), fc2=nn.Linear(d, c)))


def image_net(input_shape=(1, 8, 8), num_classes=10) -> nn.Sequential:
    return resnet_small(input_shape, num_classes, width=4)


def make_ctx(build, *, seed=0, num_classes=4, input_shape=(4,), upstream=None) -> MethodContext:
    return MethodContext(stage="train", seed=seed, epochs=1, num_classes=num_classes,
                         input_shape=tuple(input_shape),
                         train=Split(torch.zeros(0, *input_shape), torch.zeros(0, dtype=torch.long)),
                         device=torch.device("cpu"), upstream=upstream or {}, build_model=build)


def frozen(method):
    """What the engine does to an upstream stage's method before handing it over as a ref."""
    method.eval()
    method.requires_grad_(False)
    return method


pytestmark = pytest.mark.usefixtures("one_thread")


def eval_ctx(x, y, num_classes, tmp_path, batch_size=3) -> EvalContext:
    data = DataBundle(train=Split(x, y), test=Split(x, y), num_classes=num_classes)
    return EvalContext(data=data, epoch=1, final=True, device=torch.device("cpu"),
                       artifact_dir=tmp_path, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Architectures and splitting
# ---------------------------------------------------------------------------------------------
def test_resnet56_is_he_et_al_cifar_resnet():
    net = resnet56((3, 32, 32), 10, shortcut="padding")
    # He et al. 2016, Table 6: ResNet-56 has 0.85M parameters (option A shortcuts)
    assert sum(p.numel() for p in net.parameters()) == 853_018
    names = [n for n, _ in net.named_children()]
    assert names[0] == "stem" and names[-3:] == ["pool", "flatten", "fc"]
    assert sum(n.startswith("stage") for n in names) == 27
    assert net.default_split == "stage2_block9"
    z = net[:names.index("stage2_block9") + 1](torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 32, 16, 16)  # after stage 2: 32 channels at half resolution
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    proj = resnet56((3, 32, 32), 10)
    assert sum(p.numel() for p in proj.parameters()) > 853_018  # 1x1 projections added


def test_small_resnets_adapt_to_the_offline_shapes():
    for shape, spatial in (((1, 8, 8), 4), ((1, 28, 28), 7)):
        net = resnet_small(shape, 10)
        names = [n for n, _ in net.named_children()]
        assert names == ["stem", "stage1_block1", "stage2_block1", "stage3_block1", "pool",
                         "flatten", "fc"]
        assert net.default_split == "stage2_block1"
        z = net[:3](torch.randn(2, *shape))
        assert z.shape == (2, 32, spatial, spatial)
        assert net(torch.randn(2, *shape)).shape == (2, 10)
    assert resnet20((3, 32, 32), 100).default_split == "stage2_block3"
    with pytest.raises(UserError, match="image inputs"):
        resnet_small((12,), 2)


def test_split_index_and_aux_head_copy():
    net = resnet_small((1, 8, 8), 10)
    assert split_index(net, "stage2_block1") == 2
    with pytest.raises(UserError, match="no layer named 'stage9'") as err:
        split_index(net, "stage9")
    assert "stage2_block1" in err.value.hint
    with pytest.raises(UserError, match="leaves no task head"):
        split_index(net, "fc")
    head = head_copy(net, 2, 4)
    assert [type(m).__name__ for m in head.children()] == ["BasicBlock", "AdaptiveAvgPool2d",
                                                           "Flatten", "Linear"]
    assert head[-1].out_features == 4 and net.fc.out_features == 10  # the original is untouched
    assert head(net[:3](torch.randn(3, 1, 8, 8))).shape == (3, 4)


# ---------------------------------------------------------------------------------------------
# head_swap
# ---------------------------------------------------------------------------------------------
def _permutation_pair():
    """Network a: identity features; network b: cyclically shifted features. Each head reads
    its own network's features correctly and no swapped pair gets any sample right."""
    torch.manual_seed(0)
    m = AuxHeads(linear_net(), make_ctx(linear_net), split="fc1")
    eye = torch.eye(4)
    shift = eye[[1, 2, 3, 0]]  # no fixed point
    with torch.no_grad():
        m.model.fc1.weight.copy_(eye)
        m.model.fc2.weight.copy_(eye)
        m.model.fc2.bias.zero_()
        m.net_b.fc1.weight.copy_(shift)
        m.net_b.fc2.weight.copy_(shift.T)
        m.net_b.fc2.bias.zero_()
    y = torch.tensor([0, 1, 2, 3, 2, 2, 1, 0])
    return m, F.one_hot(y, 4).float(), y


def test_head_swap_really_swaps(tmp_path):
    m, x, y = _permutation_pair()
    m.train()
    out = HeadSwap().evaluate(m, eval_ctx(x, y, 4, tmp_path))
    assert out["acc_fa_ha"] == 1.0 and out["acc_fb_hb"] == 1.0
    assert out["acc_fa_hb"] == 0.0 and out["acc_fb_ha"] == 0.0
    assert out["unswapped_acc"] == 1.0 and out["swapped_acc"] == 0.0 and out["swap_gap"] == 1.0
    assert out["split_depth"] == 1.0
    assert m.training and m.net_b.training  # modes are restored


def test_head_swap_pairs_each_extractor_with_the_named_head(tmp_path):
    m, x, y = _permutation_pair()
    with torch.no_grad():  # h_b now always answers class 2, whatever the features
        m.net_b.fc2.weight.zero_()
        m.net_b.fc2.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    out = HeadSwap().evaluate(m, eval_ctx(x, y, 4, tmp_path))
    share_of_2 = float((y == 2).float().mean())  # 3/8
    assert out["acc_fa_ha"] == 1.0
    assert out["acc_fb_hb"] == pytest.approx(share_of_2)
    assert out["acc_fa_hb"] == pytest.approx(share_of_2)  # f_a read by h_b
    assert out["acc_fb_ha"] == 0.0  # f_b (shifted) read by h_a
    assert out["swapped_acc"] == pytest.approx(share_of_2 / 2)


def test_evaluators_need_two_networks_and_a_split(tmp_path):
    m, x, y = _permutation_pair()
    with pytest.raises(ValueError, match="needs two networks"):
        HeadSwap(nets=["a", "c"]).evaluate(m, eval_ctx(x, y, 4, tmp_path))
    with pytest.raises(UserError, match="cannot split"):
        HeadSwap(split="fc2").evaluate(m, eval_ctx(x, y, 4, tmp_path))
    with pytest.raises(UserError, match="two networks"):
        FeatureCorrelation(nets=["a"])


# ---------------------------------------------------------------------------------------------
# Common classes
# ---------------------------------------------------------------------------------------------
def test_common_class_mask_and_renumbering():
    y = torch.tensor([0, 5, 2, 7, 1, 3])
    mask, target = common_targets(y, [0, 1, 2])
    assert mask.tolist() == [True, False, True, False, True, False]
    assert target.tolist() == [0, 2, 1]
    mask, target = common_targets(y, [7, 2])  # an explicit list: renumbered in its order
    assert mask.tolist() == [False, False, True, True, False, False]
    assert target.tolist() == [1, 0]
    mask, target = common_targets(torch.tensor([9, 4, 3, 12]), [4])  # labels above the set
    assert mask.tolist() == [False, True, False, False] and target.tolist() == [0]


def test_common_class_loss_is_eq1_on_the_masked_samples():
    torch.manual_seed(1)
    ctx = make_ctx(lambda: linear_net(4, 6), num_classes=6)
    m = AuxHeads(linear_net(4, 6), ctx, split="fc1", common_classes=True, classes=[4, 1],
                 weight=0.5)
    xa, xb = torch.randn(5, 4), torch.randn(5, 4)
    ya, yb = torch.tensor([4, 0, 1, 1, 3]), torch.tensor([2, 2, 4, 5, 0])
    terms = m.loss(pair(Batch(xa, ya, torch.arange(5)), Batch(xb, yb, torch.arange(5))))
    c = m.aux["common"]
    expected = (F.cross_entropy(c(m.model.fc1(xa[[0, 2, 3]])), torch.tensor([0, 1, 1]), reduction="sum")
                + F.cross_entropy(c(m.net_b.fc1(xb[[2]])), torch.tensor([0]), reduction="sum")) / 5
    assert terms["common"].item() == pytest.approx(0.5 * expected.item(), rel=1e-6)
    assert terms["task_a"].item() == pytest.approx(F.cross_entropy(m.model(xa), ya).item(), rel=1e-6)
    # a sample outside the common set does not reach the shared head
    ya2 = ya.clone()
    ya2[1] = 5
    again = m.loss(pair(Batch(xa, ya2, torch.arange(5)), Batch(xb, yb, torch.arange(5))))
    assert again["common"].item() == pytest.approx(terms["common"].item(), rel=1e-6)


def test_common_classes_options_are_checked():
    ctx = make_ctx(linear_net)
    for bad in (0, 5, [1, 1], [4], "five"):
        with pytest.raises(UserError):
            AuxHeads(linear_net(), ctx, split="fc1", common_classes=True, classes=bad)
    with pytest.raises(UserError, match="only applies"):
        AuxHeads(linear_net(), ctx, split="fc1", classes=3)
    with pytest.raises(UserError, match="but the task has 4"):  # the default 5 needs 5 classes
        AuxHeads(linear_net(), ctx, split="fc1", common_classes=True)
    m = AuxHeads(linear_net(4, 10), make_ctx(lambda: linear_net(4, 10), num_classes=10), split="fc1",
                 common_classes=True)
    assert m.classes == [0, 1, 2, 3, 4]  # the paper's default: the first five classes
    assert m.aux["common"][-1].out_features == 5


# ---------------------------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------------------------
def test_rotations_are_the_four_right_angles():
    sq = torch.arange(16.0).reshape(1, 1, 4, 4)  # no symmetry that could hide a wrong angle
    out = rotate(sq.repeat(4, 1, 1, 1), torch.tensor([0, 1, 2, 3]))
    for k in range(4):
        assert np.array_equal(out[k, 0].numpy(), np.rot90(sq[0, 0].numpy(), k))
    # 90 degrees counter-clockwise by hand: [[1, 2], [3, 4]] -> [[2, 4], [1, 3]]
    small = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert rotate(small, torch.tensor([1]))[0, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    with pytest.raises(UserError, match="square images"):
        AuxHeads(linear_net(), make_ctx(linear_net), split="fc1", rotation=True)


def test_rotation_batch_labels_match_the_angle():
    x = torch.randn(64, 1, 5, 5)
    xr, k = rotation_batch(x, "random", torch.Generator().manual_seed(3))
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(len(x)):
        assert np.array_equal(xr[i, 0].numpy(), np.rot90(x[i, 0].numpy(), int(k[i])))
    xa, ka = rotation_batch(x[:3], "all", torch.Generator())
    assert ka.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for i in range(12):
        assert np.array_equal(xa[i, 0].numpy(), np.rot90(x[i % 3, 0].numpy(), int(ka[i])))


def test_rotation_loss_uses_the_shared_head_on_rotated_inputs():
    torch.manual_seed(2)
    build = lambda: image_net((1, 8, 8), 10)  # noqa: E731
    m = AuxHeads(build(), make_ctx(build, num_classes=10, input_shape=(1, 8, 8)),
                 regime="incremental", rotation=True, weight=2.0)
    m.eval()  # batch norm from running statistics: the same function twice
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    state = m.generator.get_state()
    terms = m.loss(Batch(x, y, torch.arange(6)))
    xr, k = rotation_batch(x, "random", torch.Generator().set_state(state))
    expected = F.cross_entropy(m.aux["rotation"](m.features(m.model, xr)), k)
    assert terms["rotation"].item() == pytest.approx(2.0 * expected.item(), rel=1e-5)
    assert set(terms) == {"task_a", "rotation"}  # the first incremental stage trains a alone
    with pytest.raises(UserError, match="unknown rotations"):
        AuxHeads(build(), make_ctx(build, num_classes=10, input_shape=(1, 8, 8)), rotations="some")


# ---------------------------------------------------------------------------------------------
# same_init and data orders
# ---------------------------------------------------------------------------------------------
def test_same_init_identical_weights_and_each_network_its_own_batches():
    build = lambda: image_net((1, 8, 8), 10)  # noqa: E731
    ctx = make_ctx(build, num_classes=10, input_shape=(1, 8, 8))
    torch.manual_seed(0)
    same = AuxHeads(build(), ctx, same_init=True)
    a, b = same.model.state_dict(), same.net_b.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(p is not q for p, q in zip(same.model.parameters(), same.net_b.parameters()))
    torch.manual_seed(0)
    indep = AuxHeads(build(), ctx)
    a, b = indep.model.state_dict(), indep.net_b.state_dict()
    assert not torch.equal(a["stem.conv.weight"], b["stem.conv.weight"])

    assert list(same.streams()) == ["a", "b"]  # each network its own, independent data order
    seen = {}
    same.model.stem.register_forward_pre_hook(lambda mod, inp: seen.setdefault("a", inp[0]))
    same.net_b.stem.register_forward_pre_hook(lambda mod, inp: seen.setdefault("b", inp[0]))
    xa, xb = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    same.loss(pair(Batch(xa, y, torch.arange(4)), Batch(xb, y, torch.arange(4, 8))))
    assert torch.equal(seen["a"], xa) and torch.equal(seen["b"], xb)


# ---------------------------------------------------------------------------------------------
# Incremental training
# ---------------------------------------------------------------------------------------------
def _first_stage(build, seed=5, **opts):
    torch.manual_seed(seed)  # as the engine: seed, then build the stage's network first
    model = build()
    first = AuxHeads(model, make_ctx(build, seed=seed, num_classes=10, input_shape=(1, 8, 8)),
                     regime="incremental", **opts)
    return first


def test_incremental_second_stage_freezes_the_shared_head_and_f_a():
    build = lambda: image_net((1, 8, 8), 10)  # noqa: E731
    first = _first_stage(build, rotation=True, common_classes=True, distill=True)
    assert first.role == "first" and set(first.networks()) == {"a"}
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    first.loss(Batch(x, y, torch.arange(8)))["rotation"].backward()
    first = frozen(first)
    before = copy.deepcopy(first.state_dict())

    second = AuxHeads(build(), make_ctx(build, seed=6, num_classes=10, input_shape=(1, 8, 8),
                                        upstream={"a": first}),
                      regime="incremental", rotation=True, common_classes=True, distill=True)
    assert second.role == "second"
    nets = second.networks()
    assert nets["a"] is first.model and nets["b"] is second.model
    upstream_ids = {id(p) for p in first.parameters()}
    assert not any(id(p) in upstream_ids for p in second.parameters())
    assert {k.split(".")[0] for k in second.state_dict()} == {"model"}  # only b is checkpointed

    for p in first.parameters():
        p.grad = None
    opt = torch.optim.SGD(second.parameters(), lr=0.5)
    second.train()
    assert not first.training  # the reference stays in eval mode
    terms = second.loss(Batch(x, y, torch.arange(8)))
    assert set(terms) == {"task_b", "common", "rotation", "distill"}
    # distillation pulls f_b towards the frozen f_a on b's batch
    with torch.no_grad():
        expected = F.mse_loss(second.features(second.model, x), second.features(first.model, x))
    assert terms["distill"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["rotation"].backward(retain_graph=True)
    # the frozen rotation head passes the gradient on to b's extractor, and keeps none itself
    assert second.model.stem.conv.weight.grad is not None
    assert second.model.stem.conv.weight.grad.abs().sum() > 0
    sum(terms.values()).backward()
    assert all(p.grad is None for p in first.parameters())
    opt.step()
    after = first.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_incremental_same_init_rebuilds_a_initial_weights():
    build = lambda: image_net((1, 8, 8), 10)  # noqa: E731
    first = _first_stage(build, seed=11, rotation=True, same_init=True)
    initial = copy.deepcopy(first.model.state_dict())
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(1.0)  # "training" moved a away from its start
    first = frozen(first)
    torch.manual_seed(99)
    second = AuxHeads(build(), make_ctx(build, seed=99, num_classes=10, input_shape=(1, 8, 8),
                                        upstream={"a": first}),
                      regime="incremental", rotation=True, same_init=True)
    got = second.model.state_dict()
    assert all(torch.equal(initial[k], got[k]) for k in initial)
    first.init_digest.add_(1.0)  # a digest that no longer matches is refused
    with pytest.raises(RuntimeError, match="could not rebuild"):
        AuxHeads(build(), make_ctx(build, seed=99, num_classes=10, input_shape=(1, 8, 8),
                                   upstream={"a": first}),
                 regime="incremental", rotation=True, same_init=True)


def test_incremental_refuses_mismatched_references():
    build = lambda: image_net((1, 8, 8), 10)  # noqa: E731
    plain = frozen(_first_stage(build))
    ctx = make_ctx(build, num_classes=10, input_shape=(1, 8, 8), upstream={"a": plain})
    with pytest.raises(UserError, match="without the rotation head"):
        AuxHeads(build(), ctx, regime="incremental", rotation=True)
    with pytest.raises(UserError, match="was split at"):
        AuxHeads(build(), ctx, regime="incremental", split="stage1_block1")
    with pytest.raises(UserError, match="joint training takes no upstream"):
        AuxHeads(build(), ctx)
    with pytest.raises(UserError, match="without same_init"):
        AuxHeads(build(), ctx, regime="incremental", same_init=True)


# ---------------------------------------------------------------------------------------------
# Feature correlation and the Hungarian matching
# ---------------------------------------------------------------------------------------------
def test_correlation_matrix_matches_numpy_and_hungarian_recovers_a_permutation():
    rng = np.random.default_rng(0)
    fa = rng.normal(size=(40, 6, 3, 3))
    perm = np.array([3, 0, 5, 1, 4, 2])  # channel j of b is channel perm[j] of a
    fb = fa[:, perm] * 2.0 + 1.0 + 0.05 * rng.normal(size=fa.shape)
    acc = CorrelationAccumulator()
    for i in range(0, 40, 7):  # several batches of uneven size
        acc.add(torch.tensor(fa[i:i + 7]), torch.tensor(fb[i:i + 7]))
    corr = acc.matrix()
    flat_a = fa.transpose(1, 0, 2, 3).reshape(6, -1)
    flat_b = fb.transpose(1, 0, 2, 3).reshape(6, -1)
    reference = np.corrcoef(flat_a, flat_b)[:6, 6:]
    np.testing.assert_allclose(corr, reference, atol=1e-10)
    match, mean = matched_correlation(corr)
    assert np.array_equal(perm[match], np.arange(6))  # a's channel i found as b's match[i]
    assert mean > 0.99
    assert abs(np.mean(np.diag(corr))) < 0.5


def test_dead_channels_count_as_zero_correlation():
    z = torch.randn(50, 3)
    dead = z.clone()
    dead[:, 1] = 0.0
    acc = CorrelationAccumulator()
    acc.add(z, dead)
    corr = acc.matrix()
    assert corr[1, 1] == 0.0 and np.all(corr[:, 1] == 0.0)
    assert corr[0, 0] == pytest.approx(1.0) and corr[2, 2] == pytest.approx(1.0)


def test_feature_correlation_evaluator_on_permuted_features(tmp_path):
    m, x, y = _permutation_pair()
    torch.manual_seed(4)
    xs = torch.randn(30, 4)
    out = FeatureCorrelation().evaluate(m, eval_ctx(xs, torch.zeros(30, dtype=torch.long), 4, tmp_path))
    # f_b is f_a with channels shifted: matching finds them all, the same index does not
    raw = np.corrcoef(xs.numpy().T, xs.numpy()[:, [1, 2, 3, 0]].T)[:4, 4:]
    assert out["feature_corr"] == pytest.approx(float(np.mean(np.diag(raw))), abs=1e-9)
    assert out["feature_corr_matched"] == pytest.approx(1.0, abs=1e-9)
    assert out["split_depth"] == 1.0


# ---------------------------------------------------------------------------------------------
# A training effect on a tiny problem
# ---------------------------------------------------------------------------------------------
def test_distillation_aligns_features_on_a_tiny_problem(tmp_path):
    """Two linear networks on a 4-class toy task: with feature distillation their extractors
    converge to the same map and swapped heads work; independently they do not."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 3
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 8, generator=g)
    build = lambda: nn.Sequential(OrderedDict(fc1=nn.Linear(8, 8), act=nn.Tanh(), fc2=nn.Linear(8, 4)))  # noqa: E731
    results = {}
    for distill in (False, True):
        torch.manual_seed(0)
        m = AuxHeads(build(), make_ctx(build, input_shape=(8,)), split="act", distill=distill,
                     weight=5.0)
        opt = torch.optim.Adam(m.parameters(), lr=0.02)
        for step in range(300):
            ia = torch.randint(0, 400, (64,), generator=g)
            ib = torch.randint(0, 400, (64,), generator=g)
            terms = m.loss(pair(Batch(x[ia], y[ia], ia), Batch(x[ib], y[ib], ib)))
            opt.zero_grad()
            sum(terms.values()).backward()
            opt.step()
        results[distill] = HeadSwap().evaluate(m, eval_ctx(x, y, 4, tmp_path, batch_size=128))
    assert results[True]["unswapped_acc"] > 0.95 and results[False]["unswapped_acc"] > 0.95
    assert results[True]["swapped_acc"] > 0.9
    assert results[True]["swapped_acc"] > results[False]["swapped_acc"] + 0.2
