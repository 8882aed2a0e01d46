"""One reverse construction for every method that runs a network backwards through its weights.

Racecar (paper 000), the reconstruction evaluator, reversible network learning (paper 002) and
CETL's decoder (paper 003) all derive a reverse pass from the forward network instead of writing
one per architecture; they differ only in where it starts, which bias each step uses and whether
the reverse shares the forward weights. This module is that derivation; the methods choose the
parameters.

The network is an ``nn.Sequential``; its *trunk* is its first weight layers (``Linear`` /
``Conv2d``), named by ``model.reversible_trunk``, by an explicit list, or all of them
(``weight_layers``). The trunk is read into blocks ``weight -> [batch norm] -> [activation] ->
[pool | flatten]*``. Reverse step k (from block k's output space to its input space):

1. ``bias: subtract_own`` (racecar): subtract block k's own bias first;
2. apply W_k^T: ``Linear`` -> ``x @ W``, ``Conv2d`` -> ``conv_transpose2d`` with the same weight,
   stride, padding, dilation and groups (output padding chosen so the result has the forward
   input's size: then it is the exact adjoint of the linear part);
3. ``bias: add_previous`` (paper 002, Eq. 4: gamma(o W_t^T + b_{t-1})): add the bias of block k-1,
   whose size is W_k^T's output channels (per channel across a flatten);
4. apply the batch norm and the activation of block k-1 (for k = 0: the input step, see below);
   the result estimates L_k, block k's input, and is compared there, *before* upsampling;
5. where the forward pass pooled (stride = kernel, no padding) upsample nearest to the pre-pool
   size (the adjoint of sum pooling); a ``Flatten`` is undone by a reshape.

The input step (k = 0) has no block below: ``input_activation`` gives it block 0's activation
(and a batch norm owned by the reverse when block 0 has one, as Tables 7/9/11 of paper 000 do),
or leaves it linear; ``add_previous`` adds nothing there (the input has no bias).

``weights: shared`` references the forward layers (nothing is duplicated in a checkpoint);
``weights: own`` is a decoder whose W and b are parameters of its own, initialised as copies of
the forward ones (CETL's decoder), trained apart from the encoder afterwards. Batch norms stay
shared in both (their gamma/beta; statistics per ``reverse_bn``).

``conv: transpose`` computes a convolution's W^T with ``conv_transpose2d``; ``flipped`` computes
the same adjoint as a ``conv2d`` with the kernel's in/out channels swapped and its taps flipped,
where the layer has stride 1 and one group (elsewhere it falls back to the transpose). The two
agree to rounding, but on CPU PyTorch's transposed convolution does not use oneDNN and was 4-9x
slower than the forward convolution at 28x28 with 1-8 channels, which made an RNL step cost 2.5x
a plain one against a FLOP ratio of 2.0. Racecar keeps ``transpose`` so that its recorded
numbers stay bitwise the same.

Batch norm in the reverse: ``reverse_bn: batch`` normalises with the reverse tensor's own batch
statistics and leaves the forward running statistics alone; ``running`` also updates and (in
eval mode) uses the forward running averages, as paper 000's TF code did.

A layer the construction cannot reverse (a residual block, a Conv1d, a Dropout, an overlapping
pooling) is refused with a ``UserError`` that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import UserError, check_choice

__all__ = ["TRUNK_ATTRIBUTE", "BIAS_RULES", "REVERSE_BN", "WEIGHTS", "CONVS", "Block", "Trunk", "Capture",
           "ReverseNet", "declared_trunk", "weight_layers", "parse_trunk", "transpose_linear_part",
           "unpool", "add_channel_bias"]

#: the attribute an architecture sets on its model: names of the trunk's weight layers, in order
TRUNK_ATTRIBUTE = "reversible_trunk"
BIAS_RULES = ("subtract_own", "add_previous")
REVERSE_BN = ("batch", "running")
WEIGHTS = ("shared", "own")
CONVS = ("transpose", "flipped")

_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU,
                nn.Softplus, nn.Identity)
_WEIGHTS = (nn.Linear, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_SUPPORTED = ("Linear, Conv2d, BatchNorm1d/2d, elementwise activations (Tanh, ReLU, LeakyReLU, "
              "Sigmoid, ...), MaxPool2d/AvgPool2d with stride = kernel and no padding, Flatten")


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


class Capture(NamedTuple):
    """A forward pass kept for the reverse: ``inputs[k]`` is L_{k+1}, what enters weight layer k
    (for k = 0 the input, after a leading flatten); ``outputs[k]`` is block k after its
    activation, before its pooling; ``shapes[i]`` the input shape of pooling / flatten child i."""

    output: torch.Tensor
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    shapes: dict[int, torch.Size]


def declared_trunk(model: nn.Module) -> tuple[str, ...] | None:
    names = getattr(model, TRUNK_ATTRIBUTE, None)
    return tuple(names) if names else None


def weight_layers(model: nn.Module) -> tuple[str, ...]:
    """Every Linear / Conv2d child of ``model`` in order: the trunk of a reverse that runs from
    the network's output back to its input (paper 002)."""
    return tuple(n for n, m in model.named_children() if isinstance(m, _WEIGHTS))


def _refuse(name: str, module: nn.Module, why: str) -> UserError:
    return UserError(f"the reverse construction cannot reverse layer {name!r} "
                     f"({type(module).__name__}) of the trunk: {why}", key="trunk",
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


def _check_names(model: nn.Module, names) -> tuple[str, ...]:
    names = tuple(names) if names else declared_trunk(model)
    if not names:
        raise UserError(f"the architecture ({type(model).__name__}) declares no reversible trunk",
                        key="trunk", hint="list its first weight layers with the option "
                                          "`trunk: [conv1, conv2]`, or set `model."
                                          f"{TRUNK_ATTRIBUTE}` in the architecture")
    if not isinstance(model, nn.Sequential):
        raise UserError(f"a reverse pass needs an nn.Sequential to read the trunk's order of "
                        f"operations, got {type(model).__name__}", key="trunk",
                        hint="write the architecture as nn.Sequential with named children")
    known = [n for n, _ in model.named_children()]
    for n in names:
        if n not in known:
            raise UserError(f"trunk layer {n!r} is not a child of the model", key="trunk",
                            hint=f"children are: {', '.join(known)}")
    return names


def _attach(current: Block | None, before: list[int], i: int, name: str, mod: nn.Module) -> None:
    """Add a non-weight child to the block it follows (or to the modules before the first)."""
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


def parse_trunk(model: nn.Module, names=None) -> Trunk:
    """Read the trunk of ``model`` (``names``, else its declared one) into blocks, or refuse it
    with a UserError naming the layer."""
    names = _check_names(model, names)
    children = list(model.named_children())
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
        _attach(current, before, i, name, mod)
    if todo:
        raise UserError(f"trunk layers {todo} come after a layer that ends the trunk, or are "
                        "out of order", key="trunk", hint="list the trunk layers in forward order")
    return Trunk(children=children, blocks=blocks, before=before)


# ------------------------------------------------------------------------------------------------
# Reverse operations
# ------------------------------------------------------------------------------------------------
def transpose_linear_part(layer: nn.Module, y: torch.Tensor, in_shape,
                          weight: torch.Tensor | None = None, conv: str = "transpose") -> torch.Tensor:
    """W^T y for a Linear or Conv2d ``layer``: the adjoint of ``x -> layer(x) - bias`` for inputs
    of shape ``in_shape`` (batch dimension included or not: only the trailing sizes are used).
    ``weight`` replaces the layer's own (a decoder with weights of its own). ``conv: flipped``
    computes the same adjoint as a conv2d with the kernel transposed and flipped where the layer
    has stride 1 and one group (see ``ReverseNet``)."""
    weight = layer.weight if weight is None else weight
    if isinstance(layer, nn.Linear):
        return y @ weight
    h_in, w_in = in_shape[-2], in_shape[-1]
    stride, pad, dil = _pair(layer.stride), layer.padding, _pair(layer.dilation)
    pad = (0, 0) if pad == "valid" else _pair(pad)
    k = weight.shape[-2:]
    if conv == "flipped" and stride == (1, 1) and layer.groups == 1:
        flipped_pad = tuple(dil[d] * (k[d] - 1) - pad[d] for d in range(2))
        if min(flipped_pad) >= 0:
            return F.conv2d(y, weight.transpose(0, 1).flip(2, 3), None, 1, flipped_pad, dil)
    out_pad = []
    for dim, size in enumerate((h_in, w_in)):
        natural = (y.shape[-2 + dim] - 1) * stride[dim] - 2 * pad[dim] + dil[dim] * (k[dim] - 1) + 1
        out_pad.append(size - natural)
    return F.conv_transpose2d(y, weight, None, stride, pad, tuple(out_pad), layer.groups, dil)


def unpool(y: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``size`` (H, W): the reverse of a stride = kernel pooling,
    and the adjoint of sum pooling."""
    return F.interpolate(y, size=tuple(size), mode="nearest")


def add_channel_bias(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``z + bias`` per channel (dim 1). A flattened ``z`` (N x C*H*W) gets bias[c] on every
    position of channel c, as it would before the flatten, so a conv's bias can follow an FC's
    W^T (paper 002's b_{t-1} where layer t-1 is the last conv)."""
    if z.ndim == 2:
        if z.shape[1] == bias.numel():
            return z + bias
        return (z.reshape(z.shape[0], bias.numel(), -1) + bias.view(1, -1, 1)).reshape(z.shape)
    return z + bias.view(1, -1, *([1] * (z.ndim - 2)))


def _input_channels(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _check_options(bias: str, reverse_bn: str, weights: str, input_activation, conv) -> None:
    check_choice(conv, "conv", CONVS, hint="transpose (conv_transpose2d) or flipped (conv2d of "
                                           "the flipped kernel, stride 1)")
    check_choice(bias, "bias", BIAS_RULES,
                 hint="subtract_own (racecar: W^T (y - b_t)) or add_previous (paper 002: "
                      "W^T y + b_{t-1})")
    check_choice(reverse_bn, "reverse_bn", REVERSE_BN,
                 hint="batch (own batch statistics) or running (also update and use the "
                      "forward running averages)")
    check_choice(weights, "weights", WEIGHTS,
                 hint="shared (the forward weights) or own (a decoder initialised from them)")
    if not isinstance(input_activation, bool):
        raise UserError(f"input_activation must be true or false, got {input_activation!r}",
                        key="input_activation")


# ------------------------------------------------------------------------------------------------
# The reverse network
# ------------------------------------------------------------------------------------------------
class ReverseNet(nn.Module):
    """The reverse pass of a model's trunk (see the module docstring for the options).

    With ``weights: shared`` the model's layers are referenced, not registered, so the reverse
    adds no duplicate entries to a checkpoint; only what it owns (the input batch norm, and with
    ``weights: own`` the decoder's W and b) are parameters of its own.
    """

    def __init__(self, model: nn.Module, *, trunk=None, bias: str = "subtract_own",
                 input_activation: bool = True, reverse_bn: str = "batch",
                 weights: str = "shared", conv: str = "transpose"):
        super().__init__()
        _check_options(bias, reverse_bn, weights, input_activation, conv)
        self.conv = conv
        object.__setattr__(self, "model", model)  # referenced, not a submodule
        self.spec = parse_trunk(model, trunk)
        self.bias, self.reverse_bn, self.weights = bias, reverse_bn, weights
        self.input_activation = input_activation
        first = self.spec.blocks[0]
        self.input_bn = None
        if input_activation and first.bn is not None:
            cls = nn.BatchNorm1d if isinstance(first.bn, nn.BatchNorm1d) else nn.BatchNorm2d
            self.input_bn = cls(_input_channels(first.layer),
                                track_running_stats=reverse_bn == "running")
        self.own_weight = self.own_bias = None
        if weights == "own":  # a decoder: copies of the forward W and b, trained on their own
            blocks = self.spec.blocks
            self.own_weight = nn.ParameterList(
                nn.Parameter(b.layer.weight.detach().clone()) for b in blocks)
            self.own_bias = nn.ParameterDict({
                str(k): nn.Parameter(b.layer.bias.detach().clone())
                for k, b in enumerate(blocks) if b.layer.bias is not None})
        self._boundaries = {b.start for b in self.spec.blocks}
        self._ends = {b.end: k for k, b in enumerate(self.spec.blocks)}
        self._reshape_at = set(self.spec.before) | {i for b in self.spec.blocks for i in b.after}

    @property
    def depth(self) -> int:
        return len(self.spec.blocks)

    # -- forward with what the reverse needs ------------------------------------------------------
    def capture(self, x: torch.Tensor) -> Capture:
        """Run the model as its Sequential would, keeping what the reverse pass needs."""
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
        return Capture(h, inputs, outputs, shapes)

    def forward_from(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """The model's forward from block k's weight layer to its output, for an ``h`` in the
        space of L_k (paper 002 pushes a generated latent through the last layer again)."""
        for _, mod in self.spec.children[self.spec.blocks[k].start:]:
            h = mod(h)
        return h

    # -- the parts of one step --------------------------------------------------------------------
    def _w(self, k: int) -> torch.Tensor:
        return self.spec.blocks[k].layer.weight if self.own_weight is None else self.own_weight[k]

    def _b(self, k: int) -> torch.Tensor | None:
        if self.own_bias is None:
            return self.spec.blocks[k].layer.bias
        return self.own_bias[str(k)] if str(k) in self.own_bias else None

    def _norm(self, bn: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
        if bn is None:
            return z
        if self.reverse_bn == "running" and bn.running_mean is not None:
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                bn.training, bn.momentum if bn.momentum is not None else 0.1,
                                bn.eps)
        return F.batch_norm(z, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    def undo(self, indices: list[int], z: torch.Tensor, shapes) -> torch.Tensor:
        """Undo the pooling / flattening children ``indices`` (nearest upsampling, reshape)."""
        for i in reversed(indices):
            mod = self.spec.children[i][1]
            shape = shapes[i]
            z = z.reshape(z.shape[0], *shape[1:]) if isinstance(mod, nn.Flatten) else \
                unpool(z, shape[-2:])
        return z

    def step(self, k: int, r: torch.Tensor, in_shape) -> torch.Tensor:
        """Reverse step k: from block k's output space (after its activation, before its
        pooling) to an estimate of L_k, block k's input (of shape ``in_shape``)."""
        block = self.spec.blocks[k]
        b = self._b(k)
        if self.bias == "subtract_own" and b is not None:
            r = r - (b if isinstance(block.layer, nn.Linear) else b.view(1, -1, 1, 1))
        z = transpose_linear_part(block.layer, r, in_shape, self._w(k), self.conv)
        if k > 0:
            below = self.spec.blocks[k - 1]
            previous = self._b(k - 1)
            if self.bias == "add_previous" and previous is not None:
                z = add_channel_bias(z, previous)
            z = self._norm(below.bn, z)
            return below.act(z) if below.act is not None else z
        if self.input_activation:
            if self.input_bn is not None:
                z = self._norm(self.input_bn, z)
            if block.act is not None:
                z = block.act(z)
        return z

    # -- whole passes -----------------------------------------------------------------------------
    def run(self, r: torch.Tensor, top: int, cap: Capture, keep: int | None = None,
            bottom: int = 0) -> dict[int, torch.Tensor]:
        """Reverse steps top, top-1, .., bottom from ``r`` (in block ``top``'s output space);
        returns {k: estimate of L_k} for the k below ``keep`` (default: all of them)."""
        keep = self.depth if keep is None else keep
        out: dict[int, torch.Tensor] = {}
        for k in range(top, bottom - 1, -1):
            z = self.step(k, r, cap.inputs[k].shape)
            if k < keep:
                out[k] = z
            if k > 0:
                r = self.undo(self.spec.blocks[k - 1].after, z, cap.shapes)
        return out

    def to_image(self, z: torch.Tensor, cap: Capture) -> torch.Tensor:
        """L'_1 in the input's shape (undoes a leading flatten)."""
        return self.undo(self.spec.before, z, cap.shapes) if self.spec.before else z

    def regenerate(self, inputs, outputs, shapes, layers: int | None = None,
                   start: str = "constrained") -> list[torch.Tensor]:
        """L'_1 .. L'_s (each the shape of the matching ``inputs[k]``) from a captured forward,
        starting from ``outputs[s-1]`` (``start: constrained``, racecar's RR^s) or from the
        trunk's last block (``start: trunk``)."""
        s = self.depth if layers is None else int(layers)
        top = s - 1 if start == "constrained" else self.depth - 1
        cap = Capture(None, inputs, outputs, shapes)
        out = self.run(outputs[top], top, cap, keep=s)
        return [out[k] for k in range(s)]

    def regenerate_input(self, x: torch.Tensor, layers: int | None = None,
                         start: str = "constrained") -> tuple[torch.Tensor, list[torch.Tensor],
                                                              list[torch.Tensor]]:
        """(I' in the shape of ``x``, [L_1..L_s], [L'_1..L'_s]) for a batch ``x``."""
        cap = self.capture(x)
        regenerated = self.regenerate(cap.inputs, cap.outputs, cap.shapes, layers, start)
        s = len(regenerated)
        return self.to_image(regenerated[0], cap), cap.inputs[:s], regenerated
