"""Permutation alignment of two networks by weight matching (Ainsworth, Hayase & Srinivasa, 2023, "Git Re-Basin").

Hidden units can be permuted without changing the function a network computes: permuting the output
channels of a layer, the entries of everything that acts channel-wise on them (BatchNorm weights, biases,
running statistics) and the input channels of every layer that reads them, leaves the logits as they
were. Two independently trained networks ŵ1, ŵ2 may lie in one basin once ŵ2 is permuted into line with
ŵ1; the segment (1 − t) ŵ1 + t π(ŵ2) is the *aligned segment*, the natural rival of the paper's curves
(Garipov et al. 2018, Sec. 3): is the barrier of the plain segment still there after alignment?

Which weights share a permutation is read from the model's traced graph (``torch.fx.symbolic_trace``),
never written per architecture. Every tensor flowing through the graph carries a *channel space* (its
dim 1): the input and the logits are fixed spaces (never permuted); a Conv/Linear starts a new space for
its output; BatchNorm, activations, pooling and dropout pass the space through; a flatten from
(B, C, H, W) to (B, C·H·W) keeps the space with a spatial multiplicity H·W (the Linear that follows reads
C blocks of H·W inputs); an addition (a residual connection) merges the spaces of its inputs, with a
union-find. A graph op that touches a permutable space and is not understood is a clear error naming it.

Weight matching (the paper's Algorithm 1): maximise Σ_ℓ ⟨W_ℓ^(1), π(W_ℓ^(2))⟩ over the permutations by
coordinate descent: visit the permutations in random order; for one permutation P, with the others
fixed, the objective is linear in P, Σ_ij C_ij P_ij with C = Σ over every parameter axis in P's space of
W^(1) · (W^(2) with its other axes permuted)^T, solved exactly by ``scipy.optimize.linear_sum_assignment``;
stop after a sweep in which no permutation improves the objective.

    >>> spec = permutation_spec(model, torch.zeros(2, 3, 32, 32))
    >>> perms = weight_matching(spec, state_1, state_2)
    >>> aligned_2 = apply_permutation(spec, state_2, perms)  # the same function as state_2
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ModeconnError

__all__ = [
    "Axis",
    "PermutationSpec",
    "align_endpoints",
    "apply_permutation",
    "permutation_spec",
    "random_permutations",
    "weight_matching",
]


@dataclass(frozen=True)
class Axis:
    """Dimension ``dim`` of tensor ``name`` is permuted by ``group``, in blocks of ``mult`` consecutive entries
    (a Linear reading a flattened (C, H, W) map has ``mult = H·W``)."""

    name: str
    dim: int
    group: str
    mult: int = 1


@dataclass
class PermutationSpec:
    """The permutation groups of a network: ``sizes[g]`` units each, and the axes of the state dict they move.

    ``parameters`` names the entries that weight matching compares (the model's parameters; buffers such as
    BatchNorm running statistics are permuted with them but not compared).
    """

    sizes: dict[str, int] = field(default_factory=dict)
    axes: dict[str, list[Axis]] = field(default_factory=dict)  # tensor name -> its permuted axes
    parameters: tuple[str, ...] = ()

    def group_axes(self, group: str) -> list[Axis]:
        return [a for axes in self.axes.values() for a in axes if a.group == group]


# -----------------------------------------------------------------------------
# Reading the permutation groups off the traced graph


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


# Modules and functions that act on each channel alike and keep the layout (B, C, ...).
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
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
    nn.functional.dropout,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.adaptive_max_pool2d,
}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "to"}
_MERGE_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_MERGE_METHODS = {"add", "sub", "mul"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def permutation_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """The permutation groups of ``model``, read from its ``torch.fx`` graph run on ``example_input`` (B, ...).

    Raises :class:`~modeconn.errors.ModeconnError` naming the model when it cannot be traced, and naming the
    op when the graph holds an op this rule does not understand acting on a permutable space.
    """
    name = type(model).__name__
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError… depending on the code
        raise ModeconnError(
            f"align: cannot trace model {name} with torch.fx ({type(e).__name__}: {e}); the aligned segment "
            "needs a symbolically traceable forward (no data-dependent control flow)"
        ) from e
    modes = {m: m.training for m in model.modules()}
    model.eval()  # ShapeProp runs the model: BatchNorm must not update its running statistics
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
    axes: dict[str, list[tuple[int, int, int]]] = {}  # tensor -> (dim, space, mult)
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
        return ModeconnError(
            f"align: model {name}: op {what} (graph node {node.name!r}) acts on a permutable channel space and "
            "is not understood by the permutation rule (supported: Conv/Linear with groups=1, BatchNorm, "
            "elementwise activations, pooling, dropout, flatten, additions)"
        )

    for node in gm.graph.nodes:
        tensor_args = [a for a in node.all_input_nodes if values.get(a) is not None]
        if node.op == "placeholder":
            shape = _shape(node)
            values[node] = fresh(node, shape[1], fixed=True) if shape and len(shape) >= 2 else None
            continue
        if node.op == "output":
            for a in tensor_args:
                root = spaces.find(values[a].space)
                spaces.fixed[root] = True  # the logits keep their order
            continue
        shape = _shape(node)
        if shape is None or len(shape) < 2:  # not a (B, C, ...) tensor: sizes, scalars
            if any(not spaces.fixed[spaces.find(values[a].space)] for a in tensor_args) and node.op != "get_attr":
                if not (node.op == "call_method" and node.target in ("size", "dim")):
                    raise unsupported(node, _describe(node, modules))
            values[node] = None
            continue
        if node.op == "get_attr":
            values[node] = fresh(node, shape[1], fixed=True)
            continue
        ins = [values[a] for a in tensor_args]
        permutable = any(not spaces.fixed[spaces.find(v.space)] for v in ins)
        first = values.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        what = _describe(node, modules)
        if node.op == "call_module":
            mod = modules[node.target]
            prefix = f"{node.target}."
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and first is not None:
                odd = (isinstance(mod, nn.Linear) and first.ndim != 2) or getattr(mod, "groups", 1) != 1
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
        elif node.op == "call_function" and node.target in _PASS_FUNCTIONS and first is not None:
            values[node] = _Value(first.space, first.mult, len(shape))
        elif node.op == "call_method" and node.target in _PASS_METHODS and first is not None:
            values[node] = _Value(first.space, first.mult, len(shape))
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
            tensors = [a for a in node.args if isinstance(a, fx.Node) and values.get(a) is not None]
            if any(_shape(a) != shape for a in tensors):  # broadcasting: no channel-wise rule
                if permutable:
                    raise unsupported(node, what + " with broadcasting")
                values[node] = fresh(node, shape[1], fixed=True)
                continue
            v = values[tensors[0]]
            for a in tensors[1:]:
                if values[a].mult != v.mult:
                    raise unsupported(node, what + " of tensors with different layouts")
                spaces.union(v.space, values[a].space, what)
            values[node] = _Value(spaces.find(v.space), v.mult, len(shape))
        elif permutable:
            raise unsupported(node, what)
        else:
            values[node] = fresh(node, shape[1], fixed=True)

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
            spec.axes.setdefault(tensor, []).append(Axis(tensor, dim, group, mult))
    return spec


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


# -----------------------------------------------------------------------------
# Permuting and matching


def _permute(x: torch.Tensor, axis: Axis, perm: torch.Tensor) -> torch.Tensor:
    """``x`` with the units of ``axis`` reordered: unit i of the result is unit perm[i] of ``x``."""
    n = perm.numel()
    blocks = x.unflatten(axis.dim, (n, axis.mult))  # (..., n, mult, ...)
    return blocks.index_select(axis.dim, perm.to(x.device)).flatten(axis.dim, axis.dim + 1)


def apply_permutation(
    spec: PermutationSpec, state: dict[str, torch.Tensor], perms: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` (parameters and/or buffers) with every axis of ``spec`` permuted by ``perms[group]`` (new dict).

    ``perms[g][i]`` is the unit of ``state`` that goes to position i; the result computes the same function.
    Entries of ``state`` that ``spec`` does not name (or groups missing from ``perms``) are kept as they are.
    """
    out = {}
    for name, x in state.items():
        for axis in spec.axes.get(name, ()):
            if axis.group in perms:
                x = _permute(x, axis, perms[axis.group])
        out[name] = x
    return out


def random_permutations(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniformly random permutation per group (from its own seeded generator)."""
    g = torch.Generator().manual_seed(seed)
    return {group: torch.randperm(n, generator=g) for group, n in spec.sizes.items()}


def _similarity(spec: PermutationSpec, group: str, a: dict, b: dict, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """C [n, n] with C_ij = Σ over the parameter axes of ``group`` of ⟨unit i of a, unit j of b⟩, b's other axes
    permuted by ``perms`` (the objective of weight matching is Σ_i C_{i, P(i)} with the others fixed)."""
    n = spec.sizes[group]
    c = torch.zeros(n, n, dtype=torch.float64)
    for name in spec.parameters:
        for axis in spec.axes.get(name, ()):
            if axis.group != group:
                continue
            wb = b[name]
            for other in spec.axes[name]:
                if other is not axis:
                    wb = _permute(wb, other, perms[other.group])
            wa = a[name].unflatten(axis.dim, (n, axis.mult)).movedim(axis.dim, 0).reshape(n, -1)
            wb = wb.unflatten(axis.dim, (n, axis.mult)).movedim(axis.dim, 0).reshape(n, -1)
            c += wa @ wb.T
    return c


def weight_matching(
    spec: PermutationSpec,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    seed: int = 0,
    max_sweeps: int = 100,
) -> dict[str, torch.Tensor]:
    """Permutations ``perms`` such that ``apply_permutation(spec, state_b, perms)`` is close to ``state_a``.

    Ainsworth et al. 2023, Algorithm 1: coordinate descent over the groups in random order (seeded), each
    step an exact linear assignment, until a sweep improves nothing (at most ``max_sweeps``). One departure:
    the first sweep goes in graph order (input to logits), so that each group is first matched when the
    group feeding it already is; from the identity in random order, coordinate descent can settle in a
    local optimum even for an exactly permuted copy (a wide classifier whose neighbours are both still
    wrong). Only the parameters of ``spec`` are compared, in float64 on the CPU.
    """
    missing = [n for n in spec.parameters if n not in state_a or n not in state_b]
    if missing:
        raise ModeconnError(f"align: weight matching needs parameter {missing[0]!r} in both weight dicts")
    a = {n: state_a[n].detach().double().cpu() for n in spec.parameters}
    b = {n: state_b[n].detach().double().cpu() for n in spec.parameters}
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    groups = list(spec.sizes)
    g = torch.Generator().manual_seed(seed)
    for sweep in range(max_sweeps):
        improved = False
        order = range(len(groups)) if sweep == 0 else torch.randperm(len(groups), generator=g).tolist()
        for i in order:
            group = groups[i]
            c = _similarity(spec, group, a, b, perms)
            rows, cols = linear_sum_assignment(c.numpy(), maximize=True)
            new = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
            idx = torch.arange(len(new))
            old_score, new_score = c[idx, perms[group]].sum().item(), c[idx, new].sum().item()
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[group] = new
                improved = True
        if not improved:
            break
    return perms


def align_endpoints(
    template: nn.Module,
    w1: dict[str, torch.Tensor],
    w2: dict[str, torch.Tensor],
    example_input: torch.Tensor,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """ŵ2 permuted into line with ŵ1 by weight matching: (π(ŵ2), the permutations, numbers about them).

    ``w1``, ``w2`` are parameter dicts of ``template`` (e.g. a curve's endpoints); the numbers are the
    distances ‖ŵ2 − ŵ1‖ and ‖π(ŵ2) − ŵ1‖, the number of permutation groups and the fraction of hidden units
    that moved. The aligned segment is (1 − t) ŵ1 + t π(ŵ2), the same network as ŵ2 at t = 1.
    """
    spec = permutation_spec(template, example_input)
    perms = weight_matching(spec, w1, w2, seed=seed)
    aligned = apply_permutation(spec, w2, perms)
    names = list(spec.parameters)

    def dist(a: dict, b: dict) -> float:
        return float(
            sum(((a[n].detach().double().cpu() - b[n].detach().double().cpu()) ** 2).sum() for n in names) ** 0.5
        )

    units = sum(spec.sizes.values())
    moved = sum(int((p != torch.arange(p.numel())).sum()) for p in perms.values())
    info = {
        "distance_before": dist(w1, w2),
        "distance_after": dist(w1, aligned),
        "permutation_groups": len(spec.sizes),
        "hidden_units": units,
        "moved_fraction": moved / units if units else 0.0,
    }
    return aligned, perms, info
