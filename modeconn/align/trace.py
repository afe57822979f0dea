"""Reading the permutation groups of a network off its traced graph: :func:`permutation_spec`.

Which weights share a permutation is read from the model's traced graph (``torch.fx.symbolic_trace``),
never written per architecture. Every tensor flowing through the graph carries a *channel space* (its
dim 1): the input and the logits are fixed spaces (never permuted); a Conv/Linear starts a new space for
its output; BatchNorm, activations, pooling and dropout pass the space through; a flatten from
(B, C, H, W) to (B, C·H·W) keeps the space with a spatial multiplicity H·W (the Linear that follows reads
C blocks of H·W inputs); an elementwise add/sub/mul/div (a residual connection, a squeeze-excite gate)
merges the spaces of its inputs, with a union-find; a depthwise conv and a mean over spatial dims keep the
space. A parameter or buffer that meets a permutable space in elementwise arithmetic (a learned shift, a
per-channel layer scale γ of shape (C,), (C, 1, 1) or (1, C, 1, 1)) is permuted on the dim that broadcasts
onto the channels. A graph op that touches a permutable space and is not understood, or a tensor that
reaches one and cannot be given its axis, is a clear error naming it: never a silent pass.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from modeconn.errors import ModeconnError

from .permute import Axis, PermutationSpec

__all__ = ["permutation_spec"]


class _Spaces:
    """Union-find over channel spaces; each has a size and a ``fixed`` flag (the input and the logits)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.label: list[str] = []

    def new(self, size: int, label: str, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(fixed)
        self.label.append(label)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.size[a] != self.size[b]:
            raise ModeconnError(f"align: {where} joins channel spaces of {self.size[a]} and {self.size[b]} units")
        a, b = min(a, b), max(a, b)  # the older space names the group
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        return a


@dataclass(frozen=True)
class _Value:
    space: int  # channel space of dim 1
    mult: int  # entries of dim 1 per unit of the space (spatial multiplicity after a flatten)
    ndim: int


@dataclass(frozen=True)
class _Attr:
    """A tensor computed from parameters/buffers alone (no activation): the state-dict names it reads, and
    for each of its dims the dim of ``names[0]`` it is (None: an inserted dim of size 1). ``dims`` is None
    when the tensor is not a plain reshape of one parameter (which entry came from where is not known)."""

    names: tuple[str, ...]
    dims: tuple[int | None, ...] | None


# Modules and functions that act on each channel alike and keep the layout (B, C, ...).
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.leaky_relu,
    nn.functional.gelu,
    nn.functional.silu,
    nn.functional.hardswish,
    nn.functional.hardsigmoid,
    nn.functional.mish,
    nn.functional.dropout,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.adaptive_max_pool2d,
}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "to"}
# Elementwise binary arithmetic: channel c of the result reads channel c of each operand (after broadcasting).
_MERGE_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_MERGE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
# Ops that only reshape a tensor (on a parameter: which of its dims lands where is read off the shapes).
_RESHAPE_FUNCTIONS = {operator.getitem, torch.reshape, torch.unsqueeze, torch.squeeze, torch.flatten}
_RESHAPE_METHODS = {"reshape", "view", "unsqueeze", "squeeze", "flatten", "contiguous", "clone", "to", "float"}
_INFO_ATTRIBUTES = {"ndim", "shape", "dtype", "device"}  # getattr(x, "ndim") in timm's asserts: no tensor


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def permutation_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """The permutation groups of ``model``, read from its ``torch.fx`` graph run on ``example_input`` (B, ...).

    Raises :class:`~modeconn.errors.ModeconnError` naming the model when it cannot be traced, naming the op
    when the graph holds an op this rule does not understand acting on a permutable space, and naming the
    tensor when a parameter or buffer reaches a permutable space in a way it cannot be permuted with.
    """
    name = type(model).__name__
    modes = {m: m.training for m in model.modules()}
    # Traced and run in eval mode: a graph bakes in ``training`` (timm's BatchNormAct2d calls
    # F.batch_norm(training=self.training)), and ShapeProp must not update BatchNorm running statistics.
    model.eval()
    try:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError… depending on the code
            raise ModeconnError(
                f"align: cannot trace model {name} with torch.fx ({type(e).__name__}: {e}); the aligned segment "
                "needs a symbolically traceable forward (no data-dependent control flow)"
            ) from e
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example_input)
        except Exception as e:
            raise ModeconnError(
                f"align: model {name} does not run on an input of shape {tuple(example_input.shape)}: {e}"
            ) from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    spaces = _Spaces()
    values: dict[fx.Node, _Value | None] = {}
    attrs: dict[fx.Node, _Attr] = {}  # tensors made of parameters/buffers alone
    axes: dict[str, list[tuple[int, int, int]]] = {}  # tensor -> (dim, space, mult)
    untracked: list[tuple[_Attr, int, str]] = []  # (tensor, space, op): an error if the space is permuted
    modules = dict(gm.named_modules())

    def claim(tensor: str, dim: int, v: _Value, where: str) -> None:
        for d, s, m in axes.setdefault(tensor, []):
            if d == dim:  # a module called twice: both inputs must share the permutation
                spaces.union(s, v.space, where)
                if m != v.mult:
                    raise ModeconnError(f"align: {where}: {tensor} is read with two layouts of its input")
                return
        axes[tensor].append((dim, v.space, v.mult))

    def fresh(node: fx.Node, channels: int, fixed: bool = False) -> _Value:
        shape = _shape(node)
        return _Value(spaces.new(channels, node.name, fixed), 1, len(shape) if shape else 2)

    def unsupported(node: fx.Node, what: str) -> ModeconnError:
        names = dict.fromkeys(n for a in node.all_input_nodes if a in attrs for n in attrs[a].names)
        reading = f", reading {', '.join(map(repr, names))}" if names else ""
        return ModeconnError(
            f"align: model {name}: op {what} (graph node {node.name!r}{reading}) acts on a permutable channel "
            "space and is not understood by the permutation rule (supported: Conv/Linear with groups=1, depthwise "
            "convs, BatchNorm, elementwise activations, pooling, spatial means, dropout, flatten, elementwise "
            "add/sub/mul/div, also with a parameter or buffer broadcast per channel)"
        )

    for node in gm.graph.nodes:
        tensor_args = [a for a in node.all_input_nodes if values.get(a) is not None]
        attr_args = [a for a in node.all_input_nodes if a in attrs]
        shape = _shape(node)
        if node.op == "placeholder":
            values[node] = fresh(node, shape[1], fixed=True) if shape and len(shape) >= 2 else None
            continue
        if node.op == "output":
            for a in tensor_args:
                root = spaces.find(values[a].space)
                spaces.fixed[root] = True  # the logits keep their order
            continue
        if node.op == "get_attr" or (attr_args and not tensor_args and node.op != "call_module"):
            values[node] = None  # a parameter, or a tensor computed from parameters alone (γ.reshape(1, -1, 1, 1))
            if shape is not None:
                attrs[node] = _attr(node, shape, [attrs[a] for a in attr_args])
            continue
        if shape is None or len(shape) < 2:  # not a (B, C, ...) tensor: sizes, scalars
            if any(not spaces.fixed[spaces.find(values[a].space)] for a in tensor_args):
                info = (node.op == "call_method" and node.target in ("size", "dim")) or (
                    node.op == "call_function" and node.target is getattr and node.args[1] in _INFO_ATTRIBUTES
                )
                if not info:
                    raise unsupported(node, _describe(node, modules))
            values[node] = None
            continue
        ins = [values[a] for a in tensor_args]
        permutable = any(not spaces.fixed[spaces.find(v.space)] for v in ins)
        first = values.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        what = _describe(node, modules)
        if node.op == "call_module":
            mod = modules[node.target]
            prefix = f"{node.target}."
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and first is not None:
                groups = getattr(mod, "groups", 1)
                # depthwise: output channel c·k + j reads input channel c alone (k = out / in channels)
                depthwise = 1 < groups == mod.in_channels and mod.out_channels % groups == 0
                odd = (isinstance(mod, nn.Linear) and first.ndim != 2) or (groups != 1 and not depthwise)
                if odd and permutable:
                    raise unsupported(
                        node,
                        what
                        + (
                            f" with groups={mod.groups}"
                            if first.ndim == 2 or not isinstance(mod, nn.Linear)
                            else " on a tensor of more than 2 dims"
                        ),
                    )
                if odd:
                    values[node] = fresh(node, shape[1], fixed=True)
                    continue
                if depthwise:  # the input's space goes on, each unit now k consecutive channels
                    out = _Value(first.space, first.mult * (mod.out_channels // groups), len(shape))
                else:
                    claim(prefix + "weight", 1, first, what)
                    out = fresh(node, shape[1])
                claim(prefix + "weight", 0, out, what)
                if mod.bias is not None:
                    claim(prefix + "bias", 0, out, what)
                values[node] = out
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and first is not None:
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, t, None) is not None:
                        claim(prefix + t, 0, first, what)
                values[node] = first
            elif isinstance(mod, _PASS_MODULES) and first is not None:
                values[node] = _Value(first.space, first.mult, len(shape))
            elif isinstance(mod, nn.Flatten) and first is not None:
                values[node] = _flatten(node, first, shape, permutable, unsupported, what)
            elif permutable:
                raise unsupported(node, what)
            else:
                values[node] = fresh(node, shape[1], fixed=True)
        elif (
            node.op == "call_function"
            and node.target is nn.functional.linear
            and first is not None
            and first.ndim == 2
            and _arg(node, 1, "weight") in attrs
            and all(attrs[a].dims is not None and None not in attrs[a].dims for a in attr_args)
        ):  # F.linear(x, weight, bias), as timm's Linear calls it: a Linear module's rule
            weight, bias = (_arg(node, i, k) for i, k in ((1, "weight"), (2, "bias")))
            claim(attrs[weight].names[0], attrs[weight].dims[1], first, what)
            out = fresh(node, shape[1])
            claim(attrs[weight].names[0], attrs[weight].dims[0], out, what)
            if bias is not None:
                claim(attrs[bias].names[0], attrs[bias].dims[0], out, what)
            values[node] = out
        elif node.op == "call_function" and node.target is nn.functional.batch_norm and first is not None:
            # F.batch_norm(x, running_mean, running_var, weight, bias, …), as timm's BatchNormAct2d calls it
            for a in attr_args:
                t = attrs[a]
                if t.dims is None or None in t.dims or _shape(a) != (shape[1],):
                    raise unsupported(node, what + f" with {t.names[0]!r} of shape {_shape(a)}")
                claim(t.names[0], t.dims[0], first, what)
            values[node] = first
        elif attr_args and not (
            (node.op == "call_function" and node.target in _MERGE_FUNCTIONS)
            or (node.op == "call_method" and node.target in _MERGE_METHODS)
        ):
            if permutable:  # any other op that reads a parameter: its channel rule is not known
                raise unsupported(node, what)
            values[node] = fresh(node, shape[1], fixed=True)
        elif node.op == "call_function" and _passes(node.target) and first is not None:
            values[node] = _Value(first.space, first.mult, len(shape))
        elif node.op == "call_method" and node.target in _PASS_METHODS and first is not None:
            values[node] = _Value(first.space, first.mult, len(shape))
        elif (node.op == "call_function" and node.target in _REDUCE_FUNCTIONS) or (
            node.op == "call_method" and node.target in _REDUCE_METHODS
        ):
            dims = _reduced_dims(node)
            if first is not None and dims is not None and not {0, 1} & dims:  # a mean over space (squeeze-excite)
                values[node] = _Value(first.space, first.mult, len(shape))
            elif permutable:
                raise unsupported(node, what + f" over dims {sorted(dims) if dims is not None else 'all'}")
            else:
                values[node] = fresh(node, shape[1], fixed=True)
        elif (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target in _FLATTEN_METHODS
        ):
            if first is None:
                values[node] = fresh(node, shape[1], fixed=True)
            else:
                values[node] = _flatten(node, first, shape, permutable, unsupported, what)
        elif (node.op == "call_function" and node.target in _MERGE_FUNCTIONS) or (
            node.op == "call_method" and node.target in _MERGE_METHODS
        ):
            # Elementwise with broadcasting: operands line up from the last dim. An activation joins when its
            # dim 1 is the result's (a squeeze-excite gate (B, C, 1, 1) included); of size 1 it broadcasts.
            joined = []
            for a in tensor_args:
                a_shape, v = _shape(a), values[a]
                if len(a_shape) != len(shape):
                    if permutable:
                        raise unsupported(node, what + f" broadcasting {tuple(a_shape)} onto {tuple(shape)}")
                elif a_shape[1] == shape[1]:
                    joined.append(v)
            if not joined:
                values[node] = fresh(node, shape[1], fixed=True)
            else:
                v = joined[0]
                for u in joined[1:]:
                    if u.mult != v.mult:
                        raise unsupported(node, what + " of tensors with different layouts")
                    spaces.union(v.space, u.space, what)
                values[node] = v = _Value(spaces.find(v.space), v.mult, len(shape))
                # A parameter operand (a shift, a layer scale γ): permuted on the dim that meets the channels.
                for a in attr_args:
                    t, a_shape = attrs[a], _shape(a)
                    k = len(a_shape) - len(shape) + 1  # its dim that broadcasts onto dim 1
                    if k < 0 or a_shape[k] == 1:
                        continue  # the same for every channel
                    if t.dims is None or t.dims[k] is None:
                        untracked.append((t, v.space, f"{what} (graph node {node.name!r})"))
                    else:
                        claim(t.names[0], t.dims[k], v, what)
        elif permutable:
            raise unsupported(node, what)
        else:
            values[node] = fresh(node, shape[1], fixed=True)

    for t, s, where in untracked:  # decided at the end: a space turns fixed when it reaches the logits
        if not spaces.fixed[spaces.find(s)]:
            raise ModeconnError(
                f"align: model {name}: {' and '.join(map(repr, t.names))} reaches a permutable channel space "
                f"through op {where}, computed from it by ops the rule cannot follow, so it cannot be permuted "
                "with the channels (a parameter used as is, or reshaped, is)"
            )
    spec = PermutationSpec(parameters=tuple(n for n, _ in model.named_parameters()))
    roots = sorted({spaces.find(s) for claimed in axes.values() for _, s, _ in claimed})
    for root in roots:  # groups in graph order (a space is older than the spaces computed from it)
        if not spaces.fixed[root]:
            spec.sizes[f"P_{spaces.label[root]}"] = spaces.size[root]
    state = model.state_dict()
    for tensor, claimed in axes.items():
        for dim, s, mult in claimed:
            root = spaces.find(s)
            if spaces.fixed[root]:
                continue
            group = f"P_{spaces.label[root]}"
            if tensor in state and state[tensor].shape[dim] != spaces.size[root] * mult:
                raise ModeconnError(
                    f"align: model {name}: {tensor} has {state[tensor].shape[dim]} entries on dim {dim}, "
                    f"expected {spaces.size[root]} × {mult}"
                )
            if tensor not in state:  # a plain attribute tensor: permuting it in the state dict cannot work
                raise ModeconnError(
                    f"align: model {name}: tensor {tensor!r} acts on a permutable channel space but is not in the "
                    "state dict (a plain attribute or a non-persistent buffer), so it cannot be permuted with the "
                    "channels"
                )
            spec.axes.setdefault(tensor, []).append(Axis(tensor, dim, group, mult))
    return spec


def _attr(node: fx.Node, shape: tuple[int, ...], ins: list[_Attr]) -> _Attr:
    """The :class:`_Attr` of a node computed from parameters alone: a parameter itself; a reshape of one that
    only inserts or drops dims of size 1 (γ.reshape(1, -1, 1, 1), γ[:, None, None]) or an elementwise
    function of one keeps track of its dims; anything else is known only by the names it reads."""
    if node.op == "get_attr":
        return _Attr((node.target,), tuple(range(len(shape))))
    names = tuple(dict.fromkeys(n for t in ins for n in t.names))
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    reshape = (node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS) or (
        node.op == "call_method" and node.target in _RESHAPE_METHODS
    )
    elementwise = (node.op == "call_function" and node.target in _PASS_FUNCTIONS) or (
        node.op == "call_method" and node.target in _PASS_METHODS
    )
    if len(ins) != 1 or source is None or _shape(source) is None or ins[0].dims is None:
        return _Attr(names, None)
    in_shape, (t,) = _shape(source), ins
    if elementwise and in_shape == shape:
        return t
    if node.target is operator.getitem and not _plain_index(node.args[1]):
        return _Attr(names, None)  # g[order], g[2:]: which entry lands where is not read off the shapes
    if reshape and [n for n in in_shape if n != 1] == [n for n in shape if n != 1]:
        kept = iter(d for d, n in zip(t.dims, in_shape) if n != 1)  # the source's dims that are not 1, in order
        return _Attr(t.names, tuple(next(kept) if n != 1 else None for n in shape))
    return _Attr(names, None)


def _plain_index(index) -> bool:
    """An index that only inserts dims or takes whole dims (``[:, None, None]``, ``[..., None]``): no entry moves."""
    entries = index if isinstance(index, tuple) else (index,)
    return all(e is None or e is Ellipsis or e == slice(None) for e in entries)


def _passes(target) -> bool:
    """A function that acts on each channel alike; torchvision's stochastic depth (fx-wrapped, so a graph
    node of its own) drops whole samples or nothing."""
    if target in _PASS_FUNCTIONS:
        return True
    return getattr(target, "__name__", "") == "stochastic_depth" and getattr(target, "__module__", "").startswith(
        "torchvision."
    )


def _arg(node: fx.Node, index: int, key: str):
    """Argument ``index`` (or keyword ``key``) of a call node, None when absent."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(key)


def _reduced_dims(node: fx.Node) -> set[int] | None:
    """The dims a mean/sum/amax/amin reduces (non-negative), or None for all of them."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    in_shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if dim is None or in_shape is None:
        return None
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return {d % len(in_shape) for d in dims}


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} module {node.target!r}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    target = getattr(node.target, "__name__", str(node.target))
    return f"function {target}"


def _flatten(node, first: _Value, shape, permutable: bool, unsupported, what: str) -> _Value:
    """A flatten (B, C, *S) → (B, C·ΠS) keeps the space with multiplicity ΠS; anything else is not understood."""
    in_shape = _shape(node.args[0])
    if in_shape == shape:
        return first
    if len(shape) == 2 and in_shape is not None and in_shape[0] == shape[0] and len(in_shape) > 2:
        return _Value(first.space, first.mult * int(np.prod(in_shape[2:])), 2)
    if permutable:
        raise unsupported(node, what + f" from {in_shape} to {shape}")
    return _Value(first.space, first.mult, len(shape))
