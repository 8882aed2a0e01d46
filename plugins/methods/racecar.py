"""Racecar training (paper 000): a reverse pass that reuses the forward weights must regenerate
the input and the intermediate activations, so the features keep information about the input
instead of specialising on the task.

The reverse pass is derived from the architecture, never written per network. An architecture
declares its *reversible trunk*: the names of its first weight layers (``model.reversible_trunk``,
or the method option ``trunk:``), which must be children of an ``nn.Sequential``. Everything
between those layers is read into blocks ``weight -> [batch norm] -> [activation] -> [pool |
flatten]*`` and each block m gets the reverse operation of METHODS.md:

- subtract the block's bias, then apply W^T: ``Linear`` -> ``x @ W``, ``Conv2d`` ->
  ``conv_transpose2d`` with the same weight, stride, padding, dilation and groups (the output
  padding chosen so that the result has the forward input's size: then it is the exact adjoint);
- apply the batch norm and the activation of block m-1 (the layer whose output L_m is), giving
  L'_m, which is compared with L_m (the input of block m) *before* any upsampling;
- where the forward pass pooled (max or average, stride = kernel), upsample nearest to the
  pre-pool size; a ``Flatten`` is undone by a reshape.

A layer the construction cannot reverse (a residual block, a Conv1d, a Dropout, a pooling that
overlaps) is refused with a ``UserError`` that names it.

Readings, each an option with the default METHODS.md names:

- ``loss_form: half_sq`` -- lambda_m * 1/2 * sum of squared differences over batch and features,
  as the authors' code does; ``l2`` is the norm the paper prints (its lambdas only make sense
  with the squared form).
- ``start: constrained`` -- RR^s starts the reverse pass from the output of layer s (after its
  activation, before its pooling) and regenerates L'_s .. L'_1; ``trunk`` starts from the end of
  the whole trunk and constrains only the first s. (The paper's low RR^1_A accuracy on the MI
  task, Table 1, fits ``trunk`` better; METHODS.md names ``constrained``.)
- ``input_activation: true`` -- the regenerated input gets the activation Tables 7/9/11 give it
  (the first block's activation type; with a batch norm of its own, owned by this method, when
  the first block has one); ``false`` leaves it linear.
- ``reverse_bn: batch`` -- the reverse pass shares gamma/beta of the forward batch norm of layer
  m-1 but normalises with the reverse tensor's own batch statistics, leaving the forward running
  statistics alone; ``running`` is the authors' TF behaviour: in training the forward running
  averages are updated by the reverse tensors too, and in eval mode they are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Method, UserError, check_choice, hookimpl

__all__ = ["Racecar", "ReversePass", "TRUNK_ATTRIBUTE", "declared_trunk", "transpose_linear_part",
           "unpool", "parse_trunk"]

#: the attribute an architecture sets on its model: names of the trunk's weight layers, in order
TRUNK_ATTRIBUTE = "reversible_trunk"

_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU,
                nn.Softplus, nn.Identity)
_WEIGHTS = (nn.Linear, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_SUPPORTED = ("Linear, Conv2d, BatchNorm1d/2d, elementwise activations (Tanh, ReLU, LeakyReLU, "
              "Sigmoid, ...), MaxPool2d/AvgPool2d with stride = kernel and no padding, Flatten")
LOSS_FORMS = ("half_sq", "l2")
STARTS = ("constrained", "trunk")
REVERSE_BN = ("batch", "running")


# ------------------------------------------------------------------------------------------------
# The trunk
# ------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One reversible unit: weight layer, optional batch norm and activation, then the pooling /
    flattening that leads to the next block's input (``after``, as child indices)."""

    name: str
    layer: nn.Module
    bn: nn.Module | None = None
    act: nn.Module | None = None
    after: list[int] = field(default_factory=list)
    start: int = 0  # child index of the weight layer
    end: int = 0  # child index of the block's last module (weight, bn or activation)


@dataclass
class Trunk:
    children: list[tuple[str, nn.Module]]
    blocks: list[Block]
    before: list[int]  # child indices before the first weight layer (flatten / pooling)


def declared_trunk(model: nn.Module) -> tuple[str, ...] | None:
    names = getattr(model, TRUNK_ATTRIBUTE, None)
    return tuple(names) if names else None


def _refuse(name: str, module: nn.Module, why: str) -> UserError:
    return UserError(f"racecar cannot reverse layer {name!r} ({type(module).__name__}) of the "
                     f"trunk: {why}", key="trunk",
                     hint=f"the reverse construction supports {_SUPPORTED}; declare a shorter "
                          "trunk with the option `trunk: [layer names]`")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _check_pool(name: str, mod: nn.Module) -> None:
    k, s = _pair(mod.kernel_size), _pair(mod.stride if mod.stride is not None else mod.kernel_size)
    if k != s:
        raise _refuse(name, mod, f"kernel {k} and stride {s} differ, so windows overlap or skip "
                                 "pixels and nearest upsampling does not undo it")
    if _pair(mod.padding) != (0, 0) or mod.ceil_mode:
        raise _refuse(name, mod, "padded or ceil-mode pooling has no nearest-upsampling reverse")
    if isinstance(mod, nn.MaxPool2d) and (_pair(mod.dilation) != (1, 1) or mod.return_indices):
        raise _refuse(name, mod, "dilated pooling or pooling that returns indices")


def _check_weight(name: str, mod: nn.Module) -> None:
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise _refuse(name, mod, f"padding_mode {mod.padding_mode!r} (only zero padding has "
                                     "conv_transpose2d as its adjoint)")
        if isinstance(mod.padding, str) and mod.padding != "valid":
            raise _refuse(name, mod, f"padding={mod.padding!r}; give the padding as numbers")


def parse_trunk(model: nn.Module, names=None) -> Trunk:
    """Read the declared trunk of ``model`` into blocks, or refuse it with a UserError."""
    names = tuple(names) if names else declared_trunk(model)
    if not names:
        raise UserError(f"the architecture ({type(model).__name__}) declares no reversible trunk",
                        key="trunk", hint="list its first weight layers with the option "
                                          "`trunk: [conv1, conv2]`, or set `model."
                                          f"{TRUNK_ATTRIBUTE}` in the architecture")
    if not isinstance(model, nn.Sequential):
        raise UserError(f"racecar needs an nn.Sequential to read the trunk's order of operations, "
                        f"got {type(model).__name__}", key="trunk",
                        hint="write the architecture as nn.Sequential with named children")
    children = list(model.named_children())
    known = [n for n, _ in children]
    for n in names:
        if n not in known:
            raise UserError(f"trunk layer {n!r} is not a child of the model", key="trunk",
                            hint=f"children are: {', '.join(known)}")
    blocks: list[Block] = []
    before: list[int] = []
    todo = list(names)
    for i, (name, mod) in enumerate(children):
        current = blocks[-1] if blocks else None
        if isinstance(mod, _WEIGHTS):
            if not todo:
                break  # the first weight layer after the trunk: the trunk ends here
            if name != todo[0]:
                raise _refuse(name, mod, f"it is a weight layer before trunk layer {todo[0]!r}; "
                                         "a trunk is the network's first weight layers, in order")
            _check_weight(name, mod)
            todo.pop(0)
            blocks.append(Block(name, mod, start=i, end=i))
            continue
        if not todo and current is not None and not (
                (isinstance(mod, _NORMS) and current.bn is None and current.act is None)
                or (isinstance(mod, _ACTIVATIONS) and current.act is None)):
            break  # past the last trunk block's own batch norm and activation
        if name in names:
            raise _refuse(name, mod, "trunk names must be Linear or Conv2d layers")
        if isinstance(mod, _NORMS):
            if current is None or current.bn is not None or current.act is not None or current.after:
                raise _refuse(name, mod, "a batch norm must directly follow a weight layer")
            current.bn, current.end = mod, i
        elif isinstance(mod, _ACTIVATIONS):
            if current is None or current.act is not None or current.after:
                raise _refuse(name, mod, "an activation must follow a weight layer (or its batch "
                                         "norm), once")
            current.act, current.end = mod, i
        elif isinstance(mod, _POOLS + (nn.Flatten,)):
            if isinstance(mod, nn.Flatten):
                if mod.start_dim != 1 or mod.end_dim != -1:
                    raise _refuse(name, mod, "only Flatten(start_dim=1, end_dim=-1) is undone")
            else:
                _check_pool(name, mod)
            (current.after if current is not None else before).append(i)
        else:
            raise _refuse(name, mod, "no reverse operation is defined for it")
    if todo:
        raise UserError(f"trunk layers {todo} come after a layer that ends the trunk, or are "
                        "out of order", key="trunk", hint="list the trunk layers in forward order")
    return Trunk(children=children, blocks=blocks, before=before)


# ------------------------------------------------------------------------------------------------
# Reverse operations
# ------------------------------------------------------------------------------------------------
def transpose_linear_part(layer: nn.Module, y: torch.Tensor, in_shape) -> torch.Tensor:
    """W^T y for a Linear or Conv2d ``layer``: the adjoint of ``x -> layer(x) - bias`` for inputs
    of shape ``in_shape`` (batch dimension included or not: only the trailing sizes are used)."""
    if isinstance(layer, nn.Linear):
        return y @ layer.weight
    h_in, w_in = in_shape[-2], in_shape[-1]
    stride, pad, dil = _pair(layer.stride), layer.padding, _pair(layer.dilation)
    pad = (0, 0) if pad == "valid" else _pair(pad)
    k = layer.weight.shape[-2:]
    out_pad = []
    for dim, size in enumerate((h_in, w_in)):
        natural = (y.shape[-2 + dim] - 1) * stride[dim] - 2 * pad[dim] + dil[dim] * (k[dim] - 1) + 1
        out_pad.append(size - natural)
    return F.conv_transpose2d(y, layer.weight, None, stride, pad, tuple(out_pad), layer.groups, dil)


def unpool(y: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``size`` (H, W): the reverse of a stride = kernel pooling,
    and the adjoint of sum pooling."""
    return F.interpolate(y, size=tuple(size), mode="nearest")


class ReversePass(nn.Module):
    """The reverse pass of a model's trunk, sharing the model's weights.

    The model's layers are referenced, not registered, so the reverse pass adds no duplicate
    entries to a checkpoint; only what it owns (the input batch norm) is a parameter of its own.
    """

    def __init__(self, model: nn.Module, *, trunk=None, input_activation: bool = True,
                 reverse_bn: str = "batch"):
        super().__init__()
        check_choice(reverse_bn, "reverse_bn", REVERSE_BN,
                     hint="batch (own batch statistics) or running (also update and use the "
                          "forward running averages)")
        if not isinstance(input_activation, bool):
            raise UserError(f"input_activation must be true or false, got {input_activation!r}",
                            key="input_activation")
        object.__setattr__(self, "model", model)  # referenced, not a submodule
        self.spec = parse_trunk(model, trunk)
        self.reverse_bn = reverse_bn
        self.input_activation = input_activation
        first = self.spec.blocks[0]
        self.input_bn = None
        if input_activation and first.bn is not None:
            channels = (first.layer.in_features if isinstance(first.layer, nn.Linear)
                        else first.layer.in_channels)
            cls = nn.BatchNorm1d if isinstance(first.bn, nn.BatchNorm1d) else nn.BatchNorm2d
            self.input_bn = cls(channels, track_running_stats=reverse_bn == "running")
        self._boundaries = {b.start for b in self.spec.blocks}
        self._ends = {b.end: k for k, b in enumerate(self.spec.blocks)}
        self._reshape_at = set(self.spec.before) | {i for b in self.spec.blocks for i in b.after}

    @property
    def depth(self) -> int:
        return len(self.spec.blocks)

    # -- forward with the activations the loss compares ------------------------------------------
    def capture(self, x: torch.Tensor):
        """Run the model as its Sequential would, keeping what the reverse pass needs.

        Returns (output, inputs, outputs, shapes): ``inputs[k]`` is L_{k+1}, what enters weight
        layer k (for k = 0 the input, after a leading flatten if the network has one),
        ``outputs[k]`` is block k after its activation and before its pooling, ``shapes[i]`` the
        input shape of each pooling / flatten child i.
        """
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        shapes: dict[int, torch.Size] = {}
        h = x
        for i, (_, mod) in enumerate(self.spec.children):
            if i in self._boundaries:
                inputs.append(h)
            if i in self._reshape_at:
                shapes[i] = h.shape
            h = mod(h)
            if i in self._ends:
                outputs.append(h)
        return h, inputs, outputs, shapes

    # -- the reverse ---------------------------------------------------------------------------
    def _norm(self, bn: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
        if bn is None:
            return z
        if self.reverse_bn == "running" and bn.running_mean is not None:
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                bn.training, bn.momentum if bn.momentum is not None else 0.1,
                                bn.eps)
        return F.batch_norm(z, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    def _undo(self, indices: list[int], z: torch.Tensor, shapes) -> torch.Tensor:
        for i in reversed(indices):
            mod = self.spec.children[i][1]
            shape = shapes[i]
            z = z.reshape(z.shape[0], *shape[1:]) if isinstance(mod, nn.Flatten) else \
                unpool(z, shape[-2:])
        return z

    def regenerate(self, inputs, outputs, shapes, layers: int | None = None,
                   start: str = "constrained") -> list[torch.Tensor]:
        """L'_1 .. L'_s (each the shape of the matching ``inputs[k]``) from a captured forward.

        The reverse starts from ``outputs[s-1]`` (``start: constrained``) or from the trunk's
        last block (``start: trunk``)."""
        s = self.depth if layers is None else int(layers)
        top = s - 1 if start == "constrained" else self.depth - 1
        blocks = self.spec.blocks
        regenerated: dict[int, torch.Tensor] = {}
        r = outputs[top]
        for k in range(top, -1, -1):
            block = blocks[k]
            if block.layer.bias is not None:
                bias = block.layer.bias
                r = r - (bias if isinstance(block.layer, nn.Linear) else bias.view(1, -1, 1, 1))
            z = transpose_linear_part(block.layer, r, inputs[k].shape)
            if k > 0:
                below = blocks[k - 1]
                z = self._norm(below.bn, z)
                if below.act is not None:
                    z = below.act(z)
            elif self.input_activation:
                if self.input_bn is not None:
                    z = self._norm(self.input_bn, z)
                if block.act is not None:
                    z = block.act(z)
            if k < s:
                regenerated[k] = z
            if k > 0:
                r = self._undo(blocks[k - 1].after, z, shapes)
        return [regenerated[k] for k in range(s)]

    def regenerate_input(self, x: torch.Tensor, layers: int | None = None,
                         start: str = "constrained") -> tuple[torch.Tensor, list[torch.Tensor],
                                                              list[torch.Tensor]]:
        """(I' in the shape of ``x``, [L_1..L_s], [L'_1..L'_s]) for a batch ``x``."""
        _, inputs, outputs, shapes = self.capture(x)
        regenerated = self.regenerate(inputs, outputs, shapes, layers, start)
        image = self._undo(self.spec.before, regenerated[0], shapes) if self.spec.before \
            else regenerated[0]
        s = len(regenerated)
        return image, inputs[:s], regenerated


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------
class Racecar(Method):
    """RR^s: cross-entropy plus the racecar loss on L_1..L_s (``layers``, default all of the
    trunk) with weights lambda (``weight``: one value, or one per constrained layer)."""

    def __init__(self, model, ctx, *, layers: int | None = None, weight: Any = 1e-2,
                 loss_form: str = "half_sq", start: str = "constrained",
                 input_activation: bool = True, reverse_bn: str = "batch", trunk=None):
        super().__init__(model, ctx)
        self.reverse = ReversePass(model, trunk=trunk, input_activation=input_activation,
                                   reverse_bn=reverse_bn)
        depth = self.reverse.depth
        if layers is None:
            layers = depth
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= depth:
            raise UserError(f"layers must be a whole number from 1 to {depth} (the trunk's "
                            f"depth: {', '.join(b.name for b in self.reverse.spec.blocks)}), got "
                            f"{layers!r}", key="layers")
        self.layers = layers
        weights = list(weight) if isinstance(weight, (list, tuple)) else [weight] * layers
        if len(weights) != layers or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
            raise UserError(f"weight must be a non-negative number or a list of {layers} of them, "
                            f"got {weight!r}", key="weight",
                            hint="YAML reads 1e-2 as a string: write 1.0e-2")
        self.weights = [float(w) for w in weights]
        self.loss_form = check_choice(loss_form, "loss_form", LOSS_FORMS,
                                      hint="half_sq (authors' code) or l2 (the paper's printed norm)")
        self.start = check_choice(start, "start", STARTS,
                                  hint="constrained (from layer s) or trunk (from the trunk's end)")

    def racecar_loss(self, inputs, regenerated) -> torch.Tensor:
        total = inputs[0].new_zeros(())
        for lam, a, b in zip(self.weights, inputs, regenerated):
            diff = a - b
            sq = (diff * diff).sum()
            total = total + lam * (0.5 * sq if self.loss_form == "half_sq" else torch.sqrt(sq))
        return total

    def loss(self, batch):
        logits, inputs, outputs, shapes = self.reverse.capture(batch.x)
        regenerated = self.reverse.regenerate(inputs, outputs, shapes, self.layers, self.start)
        return {"task": F.cross_entropy(logits, batch.y),
                "racecar": self.racecar_loss(inputs, regenerated)}


@hookimpl
def harness_register_methods(register):
    register("racecar", Racecar,
             "racecar training RR^s of paper 000: a weight-sharing reverse pass regenerates "
             "the input and the first s activations")
