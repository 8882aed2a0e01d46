"""Paper 004 (spline inversion): the reconstruction J^T z, its weight gradient (a real double
backward), the per-layer terms, eq. 10's weights and reductions, the labelled / unlabelled
separation, the batch-norm refusal, the four networks' parameter counts, and a short training
run on mnist5k in which the reconstruction error falls."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from harness.api import Batch, Batches, MethodContext, MissingLabels, Split, UserError
from harness.engine import StageTask, build_data, run_stage
from harness.plugins import Plugins
from plugins.architectures.inversion_nets import (inv_large_cnn, inv_resnet2_32, inv_resnet3_16,
                                                  inv_small_cnn)
from plugins.evaluators.inversion import InversionReconstruction
from plugins.methods.spline_inversion import SplineInversion, entropy, invert, squared_error

SHAPE = (1, 8, 8)


def tiny_net(activation=nn.Tanh) -> nn.Sequential:
    """A small conv net, smooth (tanh) so that finite differences of J^T z are exact to
    O(h^2), with a mean pool: every kind of layer the paper's networks have."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 3, 3, padding=1)), ("act1", activation()),
        ("pool1", nn.AvgPool2d(2)), ("conv2", nn.Conv2d(3, 4, 3, padding=1)), ("act2", activation()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * 4 * 4, 5))])).double()


def context(shape=SHAPE, classes=5) -> MethodContext:
    return MethodContext(stage="train", seed=0, epochs=1, num_classes=classes, input_shape=shape,
                         train=Split(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long)),
                         device=torch.device("cpu"))


def batches(n_lab=3, n_unl=4, shape=SHAPE, classes=5, dtype=torch.float64) -> Batches:
    g = torch.Generator().manual_seed(3)
    lab = Batch(torch.rand(n_lab, *shape, generator=g, dtype=dtype),
                torch.randint(0, classes, (n_lab,), generator=g), torch.arange(n_lab), "labelled")
    unl = Batch(torch.rand(n_unl, *shape, generator=g, dtype=dtype), None, torch.arange(n_unl),
                "unlabelled")
    return Batches(labelled=lab, unlabelled=unl)


# ---------------------------------------------------------------------------------------------
# The reconstruction and its gradient
# ---------------------------------------------------------------------------------------------
def test_vjp_equals_the_explicit_jacobian_product(one_thread):
    torch.manual_seed(0)
    model = tiny_net()
    x = torch.rand(3, *SHAPE, dtype=torch.float64)
    inv = invert(model, x, create_graph=False)
    for i in range(len(x)):
        xi = x[i:i + 1]
        J = jacobian(lambda v: model(v)[0], xi)[:, 0]          # classes x C x H x W
        z = model(xi)[0].detach()
        explicit = torch.einsum("k,kchw->chw", z, J)           # J^T z
        torch.testing.assert_close(inv.recon[i], explicit, rtol=1e-10, atol=1e-12)
    # the samples of the batch do not leak into each other: alone or together, the same
    torch.testing.assert_close(invert(model, x[1:2], create_graph=False).recon[0], inv.recon[1])


def test_vjp_matches_the_jacobian_on_a_paper_network(one_thread):
    torch.manual_seed(0)
    model = inv_small_cnn((1, 12, 12), 10, pool="max").double()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    inv = invert(model, x, create_graph=False)
    J = jacobian(lambda v: model(v)[0], x[:1])[:, 0]
    explicit = torch.einsum("k,kchw->chw", model(x[:1])[0].detach(), J)
    torch.testing.assert_close(inv.recon[0], explicit, rtol=1e-9, atol=1e-12)


def _reconstruction_loss(model, x):
    return squared_error(invert(model, x, create_graph=True).recon, x).mean()


def test_weight_gradient_of_R_matches_finite_differences(one_thread):
    """R depends on the weights only through J^T z: its gradient exists only through the second
    backward of the VJP, and must equal central differences of R itself."""
    torch.manual_seed(1)
    model = tiny_net()
    method = SplineInversion(model, context(), alpha=0.0, beta=1.0)  # only the R term
    b = batches()
    x = torch.cat([b["labelled"].x, b["unlabelled"].x])
    terms = method.loss(b)
    assert set(terms) == {"recon"}
    terms["recon"].backward()
    for name, p in (("conv1.weight", model.conv1.weight), ("conv2.bias", model.conv2.bias),
                    ("fc.weight", model.fc.weight)):
        flat = p.data.view(-1)
        for k in torch.linspace(0, flat.numel() - 1, 4).long().tolist():
            h, old = 1e-5, flat[k].item()
            flat[k] = old + h
            up = _reconstruction_loss(model, x).item()
            flat[k] = old - h
            down = _reconstruction_loss(model, x).item()
            flat[k] = old
            fd = (up - down) / (2 * h)
            assert p.grad.view(-1)[k].item() == pytest.approx(fd, rel=1e-5, abs=1e-10), (name, k)
        assert p.grad.abs().sum() > 0
    # without create_graph there is no path from R to the weights at all
    rec = invert(model, x, create_graph=False).recon
    assert not rec.requires_grad


def test_a_relu_network_is_trained_through_the_double_backward(one_thread):
    """For a piecewise-linear network J^T z still depends on every weight (J = A[x]), and the
    R term's gradient reaches the first layer."""
    torch.manual_seed(2)
    model = inv_small_cnn((1, 8, 8), 5).double()
    method = SplineInversion(model, context(), alpha=0.0, beta=1.0)
    method.loss(batches())["recon"].backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Eq. 10 and eqs. 11-12
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("average,pixels", [("term", "mean"), ("batch", "mean"), ("term", "sum")])
def test_eq10_terms_against_an_explicit_computation(one_thread, average, pixels):
    torch.manual_seed(4)
    model = tiny_net()
    alpha, beta = 0.6, 0.3
    method = SplineInversion(model, context(), alpha=alpha, beta=beta, average=average,
                             pixels=pixels)
    b = batches(n_lab=3, n_unl=5)
    terms = method.loss(b)
    xl, yl, xu = b["labelled"].x, b["labelled"].y, b["unlabelled"].x
    x = torch.cat([xl, xu])
    z = model(x)
    ce = F.cross_entropy(z[:3], yl, reduction="none")
    p = F.softmax(z[3:], 1)
    ent = -(p * p.log()).sum(1)
    recon = torch.stack([torch.einsum("k,kchw->chw", model(x[i:i + 1])[0],
                                      jacobian(lambda v: model(v)[0], x[i:i + 1])[:, 0])
                         for i in range(len(x))])
    err = (recon - x).flatten(1).pow(2)
    r = err.mean(1) if pixels == "mean" else err.sum(1)
    red = (lambda v: v.mean()) if average == "term" else (lambda v: v.sum() / len(x))
    expected = {"ce": alpha * red(ce), "recon": (1 - alpha) * beta * red(r),
                "entropy": (1 - alpha) * (1 - beta) * red(ent)}
    assert set(terms) == set(expected)
    for k in expected:
        torch.testing.assert_close(terms[k], expected[k].detach(), rtol=1e-9, atol=1e-12)


def test_per_layer_terms_against_an_explicit_computation(one_thread):
    """Eqs. 11-12: R_l = ||(df/dz_l)^T f - z_l||^2 for the named layers (and the input), each
    from the same gradient call; alpha and beta weigh CE and E directly."""
    torch.manual_seed(5)
    model = tiny_net()
    gammas = {"input": 0.25, "act1": 0.5, "conv2": 2.0}
    method = SplineInversion(model, context(), alpha=0.4, beta=0.3, layers=gammas)
    b = batches(n_lab=2, n_unl=3)
    terms = method.loss(b)
    x = torch.cat([b["labelled"].x, b["unlabelled"].x])
    children = list(model.named_children())
    cut = {"input": 0, "act1": 2, "conv2": 4}  # the tail starts after the named layer
    for name, gamma in gammas.items():
        head, tail = nn.Sequential(*[m for _, m in children[:cut[name]]]), \
            nn.Sequential(*[m for _, m in children[cut[name]:]])
        per_sample = []
        for i in range(len(x)):
            z_l = head(x[i:i + 1]).detach()
            J = jacobian(lambda v: tail(v)[0], z_l)[:, 0]
            g = torch.einsum("k,k...->...", tail(z_l)[0].detach(), J)
            per_sample.append((g - z_l[0]).pow(2).mean())
        torch.testing.assert_close(terms[f"recon_{name}"], gamma * torch.stack(per_sample).mean(),
                                   rtol=1e-9, atol=1e-12)
    z = model(x)
    torch.testing.assert_close(terms["ce"], 0.4 * F.cross_entropy(z[:2], b["labelled"].y),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(terms["entropy"], 0.3 * entropy(z[2:]).mean(), rtol=1e-9, atol=1e-12)
    assert "recon" not in terms


def test_per_layer_terms_train_through_the_inner_targets(one_thread):
    """z_l is a target that depends on the weights too (eq. 12 as written)."""
    torch.manual_seed(6)
    model = tiny_net()
    method = SplineInversion(model, context(), alpha=0.0, beta=0.0, layers={"conv2": 1.0})
    method.loss(batches())["recon_conv2"].backward()
    assert model.conv1.weight.grad.abs().sum() > 0


def test_supervised_only_is_a_plain_cross_entropy_step(one_thread):
    torch.manual_seed(7)
    model = tiny_net()
    method = SplineInversion(model, context(), alpha=1.0, beta=0.0)
    b = batches()
    terms = method.loss(b)
    assert set(terms) == {"ce"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(model(b["labelled"].x),
                                                            b["labelled"].y))


def test_options_are_refused_with_the_key_named():
    model = tiny_net()
    for opts, key in (({"alpha": 1.5}, "alpha"), ({"beta": True}, "beta"),
                      ({"pixels": "max"}, "pixels"), ({"average": "sample"}, "average"),
                      ({"layers": {"conv9": 1.0}}, "layers"), ({"layers": {"conv2": -1}}, "layers.conv2"),
                      ({"labelled_batch": 0}, "labelled_batch"),
                      ({"unlabelled_ratio": -1}, "unlabelled_ratio")):
        with pytest.raises(UserError) as err:
            SplineInversion(model, context(), **opts)
        assert err.value.key == key
    with pytest.raises(UserError, match="did you mean 'conv2'"):
        SplineInversion(model, context(), layers={"conv3": 1.0})


def test_batch_norm_is_refused_naming_the_layer():
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3)), ("block", nn.Sequential(
        nn.BatchNorm2d(2), nn.ReLU())), ("flatten", nn.Flatten()), ("fc", nn.Linear(72, 5))]))
    with pytest.raises(UserError, match=r"layer 'block\.0' \(BatchNorm2d\) is batch norm") as err:
        SplineInversion(model, context(), alpha=0.5, beta=0.5)
    assert err.value.key == "architecture" and "A.2" in err.value.message


def test_batch_norm_is_refused_before_a_grid_starts(write_suite, capsys):
    from harness.cli import main
    path = write_suite("""
suite: bn
defaults: {epochs: 1, batch_size: 32, threads: 1}
grid:
  dataset: [{name: mnist5k, labels: 50}]
  architecture: [resnet_small]
  method: [{name: spline_inversion}]
""")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is batch norm" in err and "BatchNorm2d" in err


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------
def test_no_label_of_an_unlabelled_sample_reaches_the_method(one_thread, tmp_path):
    data = build_data(Plugins(), {"name": "mnist5k", "labels": 50}, str(tmp_path), False)
    assert len(data.train) == 50 and data.train.y is not None
    unl = data.split("unlabelled")
    assert unl.y is None and len(unl) == 4000 - 50
    torch.manual_seed(8)
    method = SplineInversion(inv_small_cnn((1, 28, 28), 10), context((1, 28, 28), 10))
    lab = Batch(data.train.x[:8], data.train.y[:8], torch.arange(8), "labelled")
    batch = Batch(unl.x[:8], None, torch.arange(8), "unlabelled")
    with pytest.raises(MissingLabels):
        batch.y
    terms = method.loss(Batches(labelled=lab, unlabelled=batch))  # reads no label of `batch`
    assert set(terms) == {"ce", "recon", "entropy"}
    streams = method.streams()
    assert streams["unlabelled"].split == "unlabelled" and streams["labelled"].split == "train"
    assert streams["labelled"].exact and method.primary_stream == "unlabelled"


def test_a_method_that_read_unlabelled_labels_would_fail(one_thread):
    """The guard the previous test relies on: an unlabelled batch has no labels to read."""
    b = batches()
    with pytest.raises(MissingLabels, match="unlabelled"):
        F.cross_entropy(torch.zeros(4, 5), b["unlabelled"].y)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory,paper", [(inv_small_cnn, 131_000), (inv_large_cnn, 1_370_000),
                                           (inv_resnet2_32, 330_000), (inv_resnet3_16, 136_000)])
def test_parameter_counts_match_the_paper(factory, paper):
    for pool in ("mean", "max"):
        model = factory((1, 28, 28), 10, pool=pool)
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - paper) / paper < 0.01, (factory.__name__, count)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        pools = [m for m in model.modules() if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
        assert pools and all(isinstance(m, nn.MaxPool2d if pool == "max" else nn.AvgPool2d)
                             for m in pools)
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# Evaluator and a short run
# ---------------------------------------------------------------------------------------------
def test_the_inversion_evaluator_works_for_any_model(one_thread, tmp_path):
    from harness.api import EvalContext
    from plugins.methods.std import Std
    torch.manual_seed(9)
    model = tiny_net().float()
    method = Std(model, context())
    x = torch.rand(20, *SHAPE)
    data = type("D", (), {"test": Split(x, torch.zeros(20, dtype=torch.long))})()
    ctx = EvalContext(data=data, epoch=3, final=True, device=torch.device("cpu"),
                      artifact_dir=tmp_path, batch_size=7)
    out = InversionReconstruction(images=4).evaluate(method, ctx)
    expected = squared_error(invert(model, x, create_graph=False).recon, x).mean()
    assert out["inv_recon_mse"] == pytest.approx(float(expected), rel=1e-5)
    assert (tmp_path / "inversion" / "epoch00003.png").stat().st_size > 1000
    assert method.training


@pytest.mark.slow
def test_reconstruction_error_falls_in_a_short_mnist5k_run(tmp_path, one_thread):
    task = StageTask(name="t", identity="t", stage="train", seed=11,
                     dataset={"name": "mnist5k", "fraction": 0.1, "labels": 50},
                     architecture={"name": "inv_small_cnn"},
                     method={"name": "spline_inversion", "alpha": 0.1, "beta": 1.0},
                     run={"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 4,
                          "threads": 1, "device": "cpu", "schedule": {"name": "constant"},
                          "momentum": 0.9, "weight_decay": 0.0, "eval_batch_size": 1024,
                          "download": False, "amp": "auto", "grad_clip": 0},
                     evaluate=[{"name": "inversion", "every": 1, "images": 0}], config={},
                     artifact_dir=str(tmp_path), data_root=str(tmp_path))
    result = run_stage(task, Plugins())
    assert result.ok, result.error
    curve = [h["inv_recon_mse"] for h in result.history]
    losses = [h["loss_recon"] for h in result.history]
    # the untrained network's J^T z is near zero, so its error is about mean(x^2) of the test set
    x = build_data(Plugins(), {"name": "mnist5k"}, str(tmp_path), False).test.x[:1000]
    torch.manual_seed(11)
    untrained = squared_error(invert(inv_small_cnn((1, 28, 28), 10), x,
                                     create_graph=False).recon, x).mean().item()
    print(untrained, curve, losses)
    assert curve[-1] < 0.7 * untrained and losses[-1] < losses[0], (untrained, curve, losses)
    assert {"loss_ce", "loss_recon"} <= set(result.history[-1])


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------
SUITES = Path(__file__).resolve().parents[1] / "suites"


@pytest.mark.parametrize("name,profile", [("semisupervised", None), ("semisupervised", "smoke"),
                                          ("semisupervised", "paper"),
                                          ("semisupervised_files", None),
                                          ("semisupervised_files", "smoke")])
def test_suites_validate(name, profile, capsys):
    from harness.cli import main
    from harness.suite import check_plugins, expand, load_suite
    path = SUITES / f"{name}.yaml"
    suite = load_suite(path, profile)
    check_plugins(suite, Plugins())
    runs = expand(suite)
    assert runs
    args = ["validate", str(path)] + (["--profile", profile] if profile else [])
    code = main(args)
    out, err = capsys.readouterr()
    if name.endswith("_files"):  # validate builds the data as run does: no torchvision files here
        assert code == 2 and "files not found under" in err, err
        return
    assert code == 0 and "is valid" in out


def test_the_offline_suite_draws_the_labels_per_seed_and_keeps_the_same_steps():
    from harness.suite import expand, load_suite
    runs = expand(load_suite(SUITES / "semisupervised.yaml"))
    assert {r.replicate for r in runs} == {0, 1, 2}
    for r in runs:
        spec = r.dataset.spec()
        assert spec["name"] == "mnist5k" and spec["subset_seed"] == r.replicate  # a new draw per seed
        assert spec["labels"] == (1000 if r.stage == "sup1000" else 50)
        assert r.architecture.spec()["name"] == "inv_small_cnn"
    rows = {(r.method.opts["alpha"], r.method.opts["beta"]) for r in runs}
    assert {(0.7, 0.2), (1.0, 0.0), (0.7, 1.0)} <= rows
    paper = expand(load_suite(SUITES / "semisupervised.yaml", "paper"))
    assert {r.run["lr"] for r in paper} == {1e-2} and {r.run["batch_size"] for r in paper} == {64}


@pytest.mark.slow
def test_smoke_profile_runs_and_reports_through_the_cli(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from harness.cli import main
    # the suite file as it is: its smoke profile shrinks the data itself (5% of the training
    # images, 30% for sup1000), since one epoch over all 3950 unlabelled images takes minutes
    # per inversion row on a shared CPU
    path = SUITES / "semisupervised.yaml"
    home = tmp_path / "h"
    assert main(["run", str(path), "--profile", "smoke", "--home", str(home), "--quiet"]) == 0
    c = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = c.get_experiment_by_name("semisupervised")
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("harness.kind") != "invocation"}
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs.values())
    inv = runs["train/Inv/seed0"].data.metrics
    assert {"loss_ce", "loss_recon", "loss_entropy", "final_inv_recon_mse",
            "final_test_acc"} <= set(inv)
    assert "loss_recon" not in runs["train/Sup50/seed0"].data.metrics
    assert "loss_entropy" not in runs["train/Beta1/seed0"].data.metrics
    grid = c.list_artifacts(runs["train/Inv/seed0"].info.run_id, "inversion")
    assert grid and grid[0].path.endswith(".png")
    out = tmp_path / "report"
    assert main(["report", str(path), "--profile", "smoke", "--home", str(home),
                 "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert "Sup1000" in text and "train.Inv > train.Sup50" in text
