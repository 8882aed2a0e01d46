"""Compatible features through shared auxiliary heads (paper 001, Gygli, Uijlings, Ferrari).

Two networks a and b of the stage's architecture are split at a named layer (``split:``) into a
feature extractor f and a task head h; a suite then asks whether f_a works with h_b and f_b with
h_a (the ``head_swap`` evaluator). Alignment variants, combinable in one run:

- ``common_classes``: a shared head c on the features of both networks, trained on the samples
  whose label is in the common set S (``classes: 5`` = the first five classes, the paper's
  default, or an explicit list). Eq. (1) sums ``l_t + lambda * l_c * 1[y in S]`` over the
  examples, so the batch mean of that sum is used: the aux cross-entropy is summed over the
  samples in S and divided by the whole batch size.
- ``rotation``: a shared 4-way head on the features of a rotated copy of the input, the label
  being the angle in {0, 90, 180, 270} degrees (counter-clockwise, ``torch.rot90``). Reading of
  "the input image is randomly rotated": one uniformly drawn right angle per sample
  (``rotations: random``); ``rotations: all`` uses all four copies of every sample, as Gidaris
  et al. do. The task loss stays on the unrotated input.
- ``same_init``: b starts from a's initial weights.
- ``distill``: L2 between the two networks' features on the same inputs (a's batch), as the mean
  squared difference per feature element (the paper gives no normalisation; the element mean
  keeps lambda = 1 meaningful at every split). In joint training both networks get its gradient.

``weight`` is lambda (reading of METHODS.md: 1). With no variant this is the "independent"
baseline. The paper leaves the auxiliary heads' form open; readings, as options:

- ``aux_head: copy`` (METHODS.md): the task head's architecture (every layer after the split)
  with its last linear layer resized to the head's outputs; ``linear``: one linear layer on the
  flattened features; ``pool``: global average pooling, then a linear layer (least capacity).
- ``head_batch: shared``: a shared head is one function on one batch, so it runs once on both
  networks' features together and its batch norm normalises them jointly; ``separate`` runs it
  once per network (per-network batch statistics, which let the head absorb a difference of
  scale between the two feature spaces).

Regimes: ``joint`` trains both networks at once, each on its own shuffled data order (the second
batch stream). ``incremental`` is two stages: a stage without the reference ``a`` trains network
a and the shared heads; a later stage that names it (``refs: {a: A}``) trains network b against
a's shared heads, frozen -- or against f_a, frozen, for distillation (the paper: "freeze the
feature extractor (for distillation) or the auxiliary task head"). ``same_init`` there rebuilds
a's initial weights from its stage's seed and checks them against a digest a's stage stored.

Everything trained is in the checkpoint: ``model`` (network a; network b in an incremental second
stage), ``net_b`` (joint), ``aux.common`` / ``aux.rotation`` (the shared heads).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Method, Stream, UserError, check_choice, check_non_negative, hookimpl

REGIMES = ("joint", "incremental")
ROTATIONS = ("random", "all")
HEAD_BATCHES = ("shared", "separate")
AUX_HEADS = ("copy", "linear", "pool")


# --------------------------------------------------------------------------------------------
# Splitting a network at a named child
# --------------------------------------------------------------------------------------------
def split_index(net: nn.Module, split: str) -> int:
    """Position of the child named ``split``: the feature extractor is children [0, index]."""
    names = [name for name, _ in net.named_children()]
    if split not in names:
        raise UserError(f"the network has no layer named {split!r} to split at", key="split",
                        hint=f"name one of its children: {', '.join(names)}")
    index = names.index(split)
    if index == len(names) - 1:
        raise UserError(f"splitting after the last layer {split!r} leaves no task head",
                        key="split", hint=f"name an earlier layer: {', '.join(names[:-1])}")
    return index


def run_children(net: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    for i, child in enumerate(net.children()):
        if start <= i < stop:
            x = child(x)
    return x


def head_copy(net: nn.Module, index: int, outputs: int) -> nn.Sequential:
    """The children after the split, with the last linear layer resized to ``outputs``."""
    head = nn.Sequential(*list(net.children())[index + 1:])
    linears = [name for name, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("the task head after the split has no linear layer to turn into an "
                        "auxiliary head", key="split", hint="split at an earlier layer")
    *path, last = linears[-1].split(".")
    parent = head.get_submodule(".".join(path)) if path else head
    old = getattr(parent, last)
    setattr(parent, last, nn.Linear(old.in_features, outputs, bias=old.bias is not None))
    return head


# --------------------------------------------------------------------------------------------
# The variants' building blocks (also used by the tests)
# --------------------------------------------------------------------------------------------
def common_targets(y: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of the samples whose label is common, and their labels renumbered 0..|S|-1 in
    the order ``classes`` lists them."""
    size = max(classes) + 1
    lookup = torch.full((size + 1,), -1, dtype=torch.long, device=y.device)  # last: "other"
    lookup[torch.tensor(classes, device=y.device)] = torch.arange(len(classes), device=y.device)
    mapped = lookup[y.clamp(0, size)]
    mask = mapped >= 0
    return mask, mapped[mask]


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each image ``x[i]`` by ``k[i]`` * 90 degrees counter-clockwise."""
    out = torch.empty_like(x)
    for r in range(4):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out


def rotation_batch(x: torch.Tensor, mode: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated inputs and their angle labels (0..3): one random right angle per sample, or all
    four of every sample."""
    if mode == "all":
        k = torch.arange(4).repeat_interleave(len(x)).to(x.device)
        return rotate(x.repeat(4, *([1] * (x.ndim - 1))), k), k
    k = torch.randint(0, 4, (len(x),), generator=generator).to(x.device)
    return rotate(x, k), k


def _digest(net: nn.Module) -> torch.Tensor:
    """A fingerprint of a network's weights (sum and sum of squares per tensor)."""
    return torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                        for p in net.parameters()]).cpu()


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
class AuxHeads(Method):
    """Two networks made compatible by shared auxiliary heads (paper 001); see the module doc."""

    def __init__(self, model, ctx, *, split: str | None = None, common_classes: bool = False,
                 classes: int | list[int] | None = None, rotation: bool = False,
                 rotations: str = "random", same_init: bool = False, distill: bool = False,
                 weight: float = 1.0, regime: str = "joint", ref: str = "a",
                 head_batch: str = "shared", aux_head: str = "copy"):
        super().__init__(model, ctx)
        self._check_switches(regime, rotations, common_classes=common_classes, rotation=rotation,
                             same_init=same_init, distill=distill)
        self.aux_head = check_choice(aux_head, "aux_head", AUX_HEADS,
                                     hint="copy (the task head's layers), linear or pool")
        self.head_batch = check_choice(head_batch, "head_batch", HEAD_BATCHES,
                                       hint="shared (one forward over both networks) or separate")
        check_non_negative(weight, "weight")
        self.split = split if split is not None else getattr(model, "default_split", None)
        if not isinstance(self.split, str):
            raise UserError("aux_heads needs the layer to split the network at", key="split",
                            hint="add `split: <layer name>`; names: "
                                 + ", ".join(n for n, _ in model.named_children()))
        self.index = split_index(model, self.split)
        self.classes = self._common_set(common_classes, classes, ctx.num_classes)
        if rotation and (len(ctx.input_shape) < 2 or ctx.input_shape[-1] != ctx.input_shape[-2]):
            raise UserError(f"rotation needs square images, the inputs are {tuple(ctx.input_shape)}",
                            key="rotation", hint="a right-angle turn of a non-square image changes "
                                                 "its shape; use common_classes or distill")
        self.rotation, self.rotations = rotation, rotations
        self.same_init, self.distill = same_init, distill
        self.weight = float(weight)
        self.regime = regime
        self.ref = ref
        self.generator = ctx.generator("rotation")  # checkpointed by the engine

        upstream = ctx.upstream.get(ref)
        if regime == "joint" and upstream is not None:
            raise UserError(f"joint training takes no upstream network, but refs names {ref!r}",
                            key="regime", hint="use `regime: incremental` for a second stage")
        #: "joint" (a and b), "first" (a alone, incremental) or "second" (b against a, frozen)
        self.role = "joint" if regime == "joint" else ("second" if upstream is not None else "first")

        if self.role == "second":
            self._check_upstream(upstream)
            self.partner = upstream  # frozen: kept out of training and of the checkpoint
            self.aux = upstream.aux
            if same_init:
                self._rebuild_initial_weights(upstream)
            return

        if self.role == "joint":
            self.net_b = copy.deepcopy(model) if same_init else ctx.build_model()
        elif same_init:  # the first stage remembers a fingerprint of a's initial weights
            self.register_buffer("init_digest", _digest(model))
        aux = {}
        if self.classes:
            aux["common"] = self._aux_head(len(self.classes))
        if rotation:
            aux["rotation"] = self._aux_head(4)
        self.aux = nn.ModuleDict(aux)

    # -- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _check_switches(regime: str, rotations: str, **switches) -> None:
        """The on/off options and the two choices that decide what gets built, refused before
        anything is."""
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise UserError(f"{key} is switched on or off, got {value!r}", key=key,
                                hint=f"write `{key}: true`")
        check_choice(regime, "regime", REGIMES)
        check_choice(rotations, "rotations", ROTATIONS,
                     hint="random (one right angle per sample) or all (four copies)")

    def _aux_head(self, outputs: int) -> nn.Module:
        if self.aux_head == "copy":
            return head_copy(self.ctx.build_model(), self.index, outputs)
        mode = self.model.training
        self.model.eval()  # a probe of the features' shape must not touch batch-norm statistics
        with torch.no_grad():
            probe = self.features(self.model, torch.zeros(2, *self.ctx.input_shape,
                                                          device=self.ctx.device))
        self.model.train(mode)
        if self.aux_head == "linear":
            return nn.Sequential(nn.Flatten(), nn.Linear(probe[0].numel(), outputs))
        if probe.ndim != 4:
            raise UserError("aux_head: pool needs image features (channels, height, width) at the "
                            f"split, got shape {tuple(probe.shape[1:])}", key="aux_head",
                            hint="use aux_head: linear or copy")
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(probe.shape[1], outputs))

    @staticmethod
    def _common_set(enabled: bool, classes, num_classes: int) -> list[int]:
        if not enabled:
            if classes is not None:
                raise UserError("`classes:` only applies to the common-classes head", key="classes",
                                hint="add `common_classes: true`")
            return []
        if classes is None:
            classes = 5
        if isinstance(classes, int) and not isinstance(classes, bool):
            if not 1 <= classes <= num_classes:
                raise UserError(f"classes: {classes} common classes, but the task has {num_classes}",
                                key="classes", hint=f"a number from 1 to {num_classes}")
            return list(range(classes))
        if (isinstance(classes, (list, tuple)) and classes
                and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)):
            if len(set(classes)) != len(classes) or not all(0 <= c < num_classes for c in classes):
                raise UserError(f"classes {list(classes)} must be distinct labels from 0 to "
                                f"{num_classes - 1}", key="classes")
            return list(classes)
        raise UserError(f"classes is a count or a list of labels, got {classes!r}", key="classes",
                        hint="e.g. `classes: 5` (the first five) or `classes: [0, 3, 7]`")

    def _check_upstream(self, up) -> None:
        where = f"the reference {self.ref!r}"
        if not isinstance(up, AuxHeads) or up.role != "first":
            raise UserError(f"{where} must be the first stage of incremental aux_heads training",
                            key="refs", hint="refs: {a: <stage trained with regime: incremental>}")
        if up.split != self.split:
            raise UserError(f"{where} was split at {up.split!r}, this stage at {self.split!r}",
                            key="split", hint="use the same split in both stages")
        if self.classes and up.classes != self.classes:
            raise UserError(f"{where} has common classes {up.classes}, this stage asks for "
                            f"{self.classes}", key="classes")
        for name, wanted, present in (("common_classes", bool(self.classes), "common" in up.aux),
                                      ("rotation", self.rotation, "rotation" in up.aux)):
            if wanted and not present:
                raise UserError(f"{where} was trained without the {name} head this stage needs",
                                key=name, hint="switch it on in the first stage too")

    def _rebuild_initial_weights(self, up) -> None:
        """Network a was built first thing after seeding its stage; build it again that way."""
        if not hasattr(up, "init_digest"):
            raise UserError(f"same_init: the reference {self.ref!r} was trained without same_init, "
                            "so its initial weights were not recorded", key="same_init",
                            hint="switch same_init on in the first stage too")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(up.ctx.seed)
            initial = self.ctx.build_model()
        if not torch.allclose(_digest(initial), up.init_digest.cpu(), rtol=1e-6, atol=1e-6):
            raise RuntimeError("same_init: could not rebuild network a's initial weights from its "
                               "seed (the architecture or its initialisation changed)")
        self.model.load_state_dict(initial.state_dict())

    # -- forward pieces ------------------------------------------------------------------------
    def features(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return run_children(net, x, 0, self.index + 1)

    def head(self, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return run_children(net, z, self.index + 1, len(list(net.children())))

    def networks(self):
        if self.role == "joint":
            return {"a": self.model, "b": self.net_b}
        if self.role == "second":
            return {"a": self.partner.model, "b": self.model}
        return {"a": self.model}

    # -- the loss ------------------------------------------------------------------------------
    def _shared_head(self, head: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                     per_network: int) -> torch.Tensor:
        """Sum over networks of (summed cross-entropy / ``per_network``), with the shared head
        run once on all networks' inputs (``head_batch: shared``) or once per network."""
        if self.head_batch == "shared":
            inputs, targets = [torch.cat(inputs)], [torch.cat(targets)]
        total = inputs[0].new_zeros(())
        for z, t in zip(inputs, targets):
            if len(t):
                total = total + F.cross_entropy(head(z), t, reduction="sum")
            else:  # keep the graph (and its device) when no sample is in the common set
                total = total + z.sum() * 0.0
        return self.weight * total / per_network

    def streams(self) -> dict[str, Stream]:
        """Joint training: each network draws its own shuffled order of the training data."""
        if self.role == "joint":
            return {"a": Stream(), "b": Stream()}
        return {"train": Stream()}

    def loss(self, batch):
        if self.role == "second":
            pairs = [("b", self.model, batch.x, batch.y)]
        elif self.role == "joint":
            batch, other = batch["a"], batch["b"]
            pairs = [("a", self.model, batch.x, batch.y), ("b", self.net_b, other.x, other.y)]
        else:
            pairs = [("a", self.model, batch.x, batch.y)]
        terms: dict[str, torch.Tensor] = {}
        feats, common, rotated = {}, ([], []), ([], [])
        for name, net, x, y in pairs:
            feats[name] = z = self.features(net, x)
            terms[f"task_{name}"] = F.cross_entropy(self.head(net, z), y)
            if self.classes:
                mask, target = common_targets(y, self.classes)
                common[0].append(z[mask])
                common[1].append(target)
            if self.rotation:
                xr, k = rotation_batch(x, self.rotations, self.generator)
                rotated[0].append(self.features(net, xr))
                rotated[1].append(k)
        n = len(batch.y)
        if self.classes:  # eq. (1): the indicator keeps the batch size as the denominator
            terms["common"] = self._shared_head(self.aux["common"], *common, per_network=n)
        if self.rotation:  # eq. (2): mean over each network's rotated copies
            terms["rotation"] = self._shared_head(self.aux["rotation"], *rotated,
                                                  per_network=len(rotated[1][0]))
        if self.distill and self.role == "joint":
            # both networks on a's inputs; the gradient reaches both
            fb = self.features(self.net_b, batch.x)
            terms["distill"] = self.weight * F.mse_loss(fb, feats["a"])
        elif self.distill and self.role == "second":
            with torch.no_grad():
                fa = self.features(self.partner.model, batch.x)
            terms["distill"] = self.weight * F.mse_loss(feats["b"], fa)
        return terms


@hookimpl
def harness_register_methods(register):
    register("aux_heads", AuxHeads,
             "paper 001: two networks made compatible by shared aux heads (common classes, "
             "rotation), same init or feature distillation; joint or incremental")
