"""REPAIR: the hidden units of an interpolated network renormalised to the interpolation of the endpoints'.

Jordan, Sedghi, Saukh, Entezari & Neyshabur, "REPAIR: REnormalizing Permuted Activations for Interpolation
Repair", ICLR 2023. On the aligned segment θ(t) = (1 − t) θ_A + t θ_B' (θ_B' = θ_B permuted into line with θ_A,
:mod:`modeconn.align`) the hidden units of the interpolated network lose variance ("variance collapse",
their Sec. 3), which makes most of the segment's barrier. REPAIR gives each channel c of each chosen layer ℓ,
at θ(t), the statistics the endpoints' channels have, interpolated (their Sec. 4):

    μ_t = (1 − t) μ_A + t μ_B,        σ_t = (1 − t) σ_A + t σ_B                      (targets)
    y'  = (y − μ) / σ · σ_t + μ_t  =  a·y + b,   a = σ_t / σ,  b = μ_t − a·μ            (correction)

where μ_A, σ_A (μ_B, σ_B) are the mean and standard deviation of the layer's output channel c in θ_A (θ_B')
and μ, σ those in θ(t), over the training data: every sample and every spatial position, exactly (float64
sums over the batches, Chan's pairwise update; a cumulative average, not a momentum; the population σ).

A per-channel affine map after a Conv/Linear is again a Conv/Linear, and after a BatchNorm again a BatchNorm,
so the correction is folded into the layer (:func:`fold`): W' = a·W (row c of the output channels), bias' =
a·bias + b; γ' = a·γ, β' = a·β + b. The repaired network is the template at other parameters — a plain
parameter dict that every measuring call of modeconn takes (:func:`modeconn.points.measure`).

The correction of layer ℓ changes the input of every later layer, so :func:`repair` goes through the layers
in the order the forward pass reaches them and measures each with the corrections before it folded in: one
pass over the batches per layer, each stopped at that layer (plus a whole pass for BatchNorm recalibration
where the network has BatchNorm). Then every repaired layer's statistics equal the targets on those batches,
to float rounding. (REPAIR's own code measures all layers in one pass, each normalised by its batch's
statistics on the way; this is exact on the data instead.)

Which layers (:func:`default_layers`): the output, before the nonlinearity, of every Conv/Linear whose output
channels form a permutation group of :func:`modeconn.align.permutation_spec` — never the classifier, whose
outputs are the logits — taken at the BatchNorm module that reads the Conv/Linear directly when there is one
(a correction before a BatchNorm would be undone by it), and only where the correction can be folded (a
Conv/Linear with a bias, a BatchNorm with affine parameters; a bias-free conv feeding a residual sum is left
out). Any other list of layers can be named (Conv1d/2d/3d, Linear, BatchNorm, GroupNorm, LayerNorm over one
dim; each called once per forward pass).

Networks with BatchNorm, ``method="reset"``: plain BN recalibration at θ(t) (:func:`modeconn.bn.recalibrate`,
which every measuring call of modeconn does anyway; the paper's "RESET"). A recalibrated BatchNorm's outputs
have mean β_t and standard deviation ≈ |γ_t| on the training data, and β, γ are interpolated with the weights,
so these are nearly REPAIR's targets at the BatchNorm outputs: exact for the mean, and for σ where γ_A and
γ_B have the same sign, up to BN's running variance being an average of per-batch variances and its ε.
``method="repair"`` (the default) sets the statistics exactly, at the BatchNorms.

Along a whole path (:func:`repaired_path`, :func:`measure_path_repaired`): the endpoints' statistics are those of
the path's ends, θ(0) and θ(1), measured once; every point θ(t) is repaired towards their interpolation at its t,
then measured as any point is (BatchNorm recalibrated there, on the same images). Any path: the aligned segment
(Jordan et al.'s case), the plain segment, a curve (its bends have no statistics of their own: the targets are
still the ends', linear in t).

Runtime: the forward passes run under the runtime's autocast (bf16 on CUDA); statistics and corrections are
float64 on the CPU; folded parameters keep their dtype, device and memory layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.func import functional_call

from .align import permutation_spec
from .bn import has_bn
from .curves import Curve
from .data import EvalBatches
from .errors import ModeconnError
from .path import PathResult, Points, measure_path
from .points import at_point, check_parameters
from .runtime import CPU, Runtime
from .train import Batches

__all__ = [
    "METHODS",
    "ChannelStats",
    "Correction",
    "Repaired",
    "activation_stats",
    "corrected",
    "default_layers",
    "fold",
    "interpolate_stats",
    "measure_path_repaired",
    "repair",
    "repaired_path",
]

METHODS = ("repair", "reset")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
EPS = 1e-8  # a channel whose σ is at most this is constant: only its mean is set


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one layer's output over all samples and positions."""

    mean: torch.Tensor  # (C,) float64, CPU
    std: torch.Tensor  # (C,) float64, CPU; the population standard deviation
    count: int  # values per channel: samples × positions


@dataclass(frozen=True)
class Correction:
    """The per-channel affine map y' = scale·y + shift after a layer (float64, CPU)."""

    scale: torch.Tensor  # (C,) a = σ_t / σ
    shift: torch.Tensor  # (C,) b = μ_t − a·μ

    @classmethod
    def between(cls, measured: ChannelStats, target: ChannelStats) -> Correction:
        """The map that takes channels with statistics ``measured`` to ``target`` (a constant channel: its mean)."""
        scale = torch.where(measured.std > EPS, target.std / measured.std.clamp_min(EPS), torch.ones_like(target.std))
        return cls(scale, target.mean - scale * measured.mean)


@dataclass
class Repaired:
    """The result of :func:`repair`: the repaired network's parameters (the template's names, no buffers) and
    the correction of each repaired layer, in forward order (empty for ``method="reset"``)."""

    params: dict[str, torch.Tensor]
    corrections: dict[str, Correction]
    method: str


def _modules(template: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """The named modules, checked to be layers whose output channels REPAIR can correct and fold."""
    modules = dict(template.named_modules())
    out = {}
    for name in layers:
        module = modules.get(name)
        if module is None:
            raise ModeconnError(f"repair: the network has no module named {name!r}")
        if not isinstance(module, (*_CONV, nn.Linear, *_NORMS)):
            raise ModeconnError(
                f"repair: layer {name!r} is a {type(module).__name__}; REPAIR corrects the output channels of a "
                "Conv1d/2d/3d, Linear, BatchNorm, GroupNorm or LayerNorm (the layer before a nonlinearity)"
            )
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            raise ModeconnError(f"repair: layer {name!r} is a LayerNorm over several dims: it has no channels")
        out[name] = module
    return out


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def _foldable(name: str, module: nn.Module) -> str | None:
    """Why the correction of ``module`` cannot be folded into its parameters, or None when it can."""
    if isinstance(module, (*_CONV, nn.Linear)) and module.bias is None:
        return f"layer {name!r} has no bias to take the correction's shift"
    if isinstance(module, _NORMS) and getattr(module, "weight", None) is None:
        return f"layer {name!r} has no affine parameters to take the correction"
    return None


def default_layers(template: nn.Module, example_input: torch.Tensor) -> list[str]:
    """The layers REPAIR corrects by default (module docstring): every Conv/Linear whose output channels are
    permuted by alignment, at the BatchNorm module reading it directly if any, where the correction folds.

    Read off the ``torch.fx`` graph (:func:`modeconn.align.permutation_spec`; an untraceable model is an error
    that says to name the layers). Listed in graph order.
    """
    spec = permutation_spec(template, example_input)
    gm = fx.symbolic_trace(template)  # traceable: permutation_spec traced it
    modules = dict(template.named_modules())
    layers = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), (*_CONV, nn.Linear)):
            continue
        if not any(a.dim == 0 for a in spec.axes.get(f"{node.target}.weight", ())):
            continue  # its outputs are not permuted: the logits, or a layer alignment leaves alone
        name = node.target
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(users[0].target), nn.modules.batchnorm._BatchNorm)
        ):
            name = users[0].target
        if _foldable(name, modules[name]) is None and name not in layers:
            layers.append(name)
    return layers


def _first_input(batches: Batches) -> torch.Tensor:
    for x, _ in batches:
        return x[:2]
    raise ModeconnError("repair: no batches to measure activation statistics on")


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layers measured are done."""


class _Accumulator:
    """Exact per-channel mean and M2 over batches (Chan et al.'s pairwise update), float64 on the CPU."""

    def __init__(self, dim: int) -> None:
        self.dim, self.n, self.mean, self.m2 = dim, 0, None, None

    def add(self, y: torch.Tensor) -> None:
        y = y.detach().movedim(self.dim, 0).reshape(y.shape[self.dim], -1).double()  # (C, values)
        m = y.shape[1]
        if m == 0:
            return
        mean_b = y.mean(1)
        m2_b = ((y - mean_b[:, None]) ** 2).sum(1)
        mean_b, m2_b = mean_b.cpu(), m2_b.cpu()
        if self.mean is None:
            self.n, self.mean, self.m2 = m, mean_b, m2_b
            return
        n = self.n + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * m / n)
        self.n = n

    def stats(self, name: str) -> ChannelStats:
        if self.mean is None:
            raise ModeconnError(f"repair: layer {name!r} is not reached by the forward pass")
        return ChannelStats(self.mean, (self.m2 / self.n).sqrt(), self.n)


@contextlib.contextmanager
def _hooks(modules: dict[str, nn.Module], hook) -> Iterator[None]:
    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def corrected(template: nn.Module, corrections: dict[str, Correction]) -> Iterator[None]:
    """Within the block, the template's named layers are followed by their corrections (forward hooks): the
    unfolded form of REPAIR, the same function as the template at :func:`fold`'s parameters."""
    modules = _modules(template, list(corrections))

    def hook(name: str):
        c, dim = corrections[name], _channel_dim(modules[name])

        def apply(module, inputs, y):
            shape = [1] * y.dim()
            shape[dim] = -1
            scale = c.scale.to(y.device, y.dtype).view(shape)
            return y * scale + c.shift.to(y.device, y.dtype).view(shape)

        return apply

    with _hooks(modules, hook):
        yield


def fold(
    template: nn.Module, params: dict[str, torch.Tensor], corrections: dict[str, Correction]
) -> dict[str, torch.Tensor]:
    """``params`` with each correction folded into its layer's weight and bias (a new dict; module docstring):
    W' = a·W along the output channels, bias' = a·bias + b (γ' = a·γ, β' = a·β + b for a norm layer)."""
    modules = _modules(template, list(corrections))
    out = dict(params)
    for name, c in corrections.items():
        why = _foldable(name, modules[name])
        if why:
            raise ModeconnError(
                f"repair: cannot fold the correction into {why}; name the layer that follows it (its BatchNorm) "
                "instead, or use a network whose layer has one"
            )
        weight, bias = out[f"{name}.weight"], out[f"{name}.bias"]
        channels = weight.shape[0]  # Conv/Linear: output channels first; norms: (C,)
        if c.scale.numel() != channels:
            raise ModeconnError(
                f"repair: the correction of layer {name!r} has {c.scale.numel()} channels, the layer {channels}"
            )
        scale = c.scale.to(weight.device, weight.dtype)
        out[f"{name}.weight"] = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        out[f"{name}.bias"] = bias * c.scale.to(bias.device, bias.dtype) + c.shift.to(bias.device, bias.dtype)
    return out


@torch.no_grad()
def _measure(
    template: nn.Module,
    params: dict[str, torch.Tensor],
    batches: Batches,
    layers: Sequence[str],
    runtime: Runtime,
    stop: bool = False,
) -> dict[str, ChannelStats]:
    """Statistics of ``layers``' outputs at ``params`` (BatchNorm recalibrated there, eval mode); with ``stop``
    each pass ends once every layer has been reached."""
    modules = _modules(template, layers)
    forward = at_point(template, params, batches, runtime)
    acc = {name: _Accumulator(_channel_dim(m)) for name, m in modules.items()}
    seen: set[str] = set()

    def hook(name: str):
        def record(module, inputs, y):
            if name in seen:
                raise ModeconnError(
                    f"repair: layer {name!r} is called more than once per forward pass: its outputs have no single "
                    "statistics to correct (a shared module); name other layers"
                )
            seen.add(name)
            acc[name].add(y)
            if stop and len(seen) == len(acc):
                raise _Stop

        return record

    with _hooks(modules, hook):
        for x, _ in batches:
            seen.clear()
            try:
                with runtime.autocast():
                    forward(x)
            except _Stop:
                pass
    return {name: a.stats(name) for name, a in acc.items()}


def activation_stats(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    batches: Batches,
    layers: Sequence[str] | None = None,
    runtime: Runtime = CPU,
) -> dict[str, ChannelStats]:
    """Per-channel mean and standard deviation of each named layer's output, at the parameters ``params``.

    Exact over every sample of ``batches`` and every position (module docstring), with the network in eval
    mode and its BatchNorm recalibrated at ``params`` on the same batches first. ``params`` holds the
    network's parameters only (:func:`modeconn.points.check_parameters`: a state dict with buffers is
    refused). ``layers`` defaults to :func:`default_layers`.
    """
    check_parameters(model, params)
    if layers is None:
        layers = default_layers(model, _first_input(batches))
    return _measure(model, params, batches, list(layers), runtime)


def interpolate_stats(stats_a: ChannelStats, stats_b: ChannelStats, t: float) -> ChannelStats:
    """REPAIR's targets: μ_t = (1 − t) μ_A + t μ_B, σ_t = (1 − t) σ_A + t σ_B."""
    if stats_a.mean.shape != stats_b.mean.shape:
        raise ModeconnError(
            f"repair: the endpoints' statistics have {stats_a.mean.numel()} and {stats_b.mean.numel()} channels"
        )
    return ChannelStats(
        (1 - t) * stats_a.mean + t * stats_b.mean,
        (1 - t) * stats_a.std + t * stats_b.std,
        min(stats_a.count, stats_b.count),
    )


@torch.no_grad()
def _forward_order(
    template: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, layers: Sequence[str], runtime: Runtime
) -> list[str]:
    """``layers`` in the order one forward pass reaches them."""
    order: list[str] = []
    modules = _modules(template, layers)
    was_training = template.training
    template.eval()
    try:
        with _hooks(modules, lambda name: lambda *_: order.append(name)), runtime.autocast():
            functional_call(template, params, (x,), strict=False)
    finally:
        template.train(was_training)
    missing = [n for n in layers if n not in order]
    if missing:
        raise ModeconnError(f"repair: layer {missing[0]!r} is not reached by the forward pass")
    return list(dict.fromkeys(order))


def repair(
    template: nn.Module,
    params_t: dict[str, torch.Tensor],
    stats_a: dict[str, ChannelStats],
    stats_b: dict[str, ChannelStats],
    t: float,
    batches: Batches,
    layers: Sequence[str] | None = None,
    runtime: Runtime = CPU,
    method: str = "repair",
) -> Repaired:
    """REPAIR of the network at ``params_t`` = θ(t) (module docstring): its layers' output channels given the
    statistics interpolated between the endpoints', ``stats_a`` of θ_A and ``stats_b`` of θ_B'
    (:func:`activation_stats` on the same ``batches``), the corrections folded into the layers.

    ``layers`` defaults to those of ``stats_a``. ``batches`` is passed over once per layer (a loader or a
    list: re-iterable; use the batches the point's BatchNorm is recalibrated on when it is measured, for the
    statistics to hold exactly there). ``method="reset"`` (networks with BatchNorm only) returns θ(t) as it
    is: the reset is the BN recalibration every measuring call does. The template's BatchNorm buffers are
    overwritten, as in every measuring call. Returns :class:`Repaired` (``.params`` for
    :func:`modeconn.points.measure`).
    """
    check_parameters(template, params_t)
    if method not in METHODS:
        raise ModeconnError(f"repair: method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0 <= t <= 1:
        raise ModeconnError(f"repair: t must be in [0, 1] (the targets interpolate the endpoints'), got {t}")
    if method == "reset":
        if not has_bn(template):
            raise ModeconnError(
                "repair: method 'reset' recalibrates BatchNorm, and this network has none; use method 'repair'"
            )
        return Repaired(dict(params_t), {}, method)
    layers = list(stats_a) if layers is None else list(layers)
    for name in layers:
        for which, stats in (("A", stats_a), ("B", stats_b)):
            if name not in stats:
                raise ModeconnError(f"repair: no statistics of layer {name!r} for endpoint {which}")
    for name, module in _modules(template, layers).items():
        why = _foldable(name, module)
        if why:
            raise ModeconnError(f"repair: cannot correct {why}; name the layer that follows it (its BatchNorm)")
    targets = {name: interpolate_stats(stats_a[name], stats_b[name], t) for name in layers}
    params = dict(params_t)
    corrections: dict[str, Correction] = {}
    for name in _forward_order(template, params, _first_input(batches), layers, runtime):
        measured = _measure(template, params, batches, [name], runtime, stop=True)[name]
        if measured.mean.shape != targets[name].mean.shape:
            raise ModeconnError(
                f"repair: layer {name!r} has {measured.mean.numel()} channels, its endpoint statistics "
                f"{targets[name].mean.numel()}"
            )
        corrections[name] = Correction.between(measured, targets[name])
        params = fold(template, params, {name: corrections[name]})
    return Repaired(params, corrections, method)


def repaired_path(
    template: nn.Module,
    points: Points,
    batches: Batches,
    runtime: Runtime = CPU,
    *,
    layers: Sequence[str] | None = None,
    method: str = "repair",
) -> Callable[[float], dict[str, torch.Tensor]]:
    """The path ``points`` (a Curve, or ``t ↦ parameters`` of ``template``) with REPAIR at every point:
    ``t ↦`` :func:`repair` of its parameters at t, towards the statistics of its ends θ(0), θ(1) interpolated at t
    (:func:`activation_stats` of both, measured once here on ``batches``; module docstring).

    ``layers`` defaults to :func:`default_layers`; ``method="reset"`` gives the path as it is (networks with
    BatchNorm: the recalibration every measuring call does). What it returns is a path for
    :func:`modeconn.path.measure_path`; pass the images ``batches`` that each point's BatchNorm is recalibrated on
    there, so that the repaired statistics hold exactly where the point is measured.
    """
    weights_at = points.weights if isinstance(points, Curve) else points

    def at(t: float) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in weights_at(float(t)).items()}

    if method == "reset":
        return lambda t: repair(template, at(t), {}, {}, t, batches, [], runtime, method).params
    if layers is None:
        layers = default_layers(template, _first_input(batches))
    stats_a, stats_b = (activation_stats(template, at(t), batches, layers, runtime) for t in (0.0, 1.0))
    return lambda t: repair(template, at(t), stats_a, stats_b, t, batches, layers, runtime, method).params


def measure_path_repaired(
    template: nn.Module,
    points: Points,
    ts: Sequence[float],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    layers: Sequence[str] | None = None,
    method: str = "repair",
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> PathResult:
    """The path ``points`` measured at each t of ``ts`` with REPAIR at every point (:func:`repaired_path`, its
    statistics on ``batches.bn``, the images each point's BatchNorm is recalibrated on): the
    :func:`modeconn.path.measure_path` of the repaired path (``wd``, ``progress`` as there). Its rows are ready for
    :func:`modeconn.barriers.barrier_card`."""
    path = repaired_path(template, points, batches.bn, runtime, layers=layers, method=method)
    return measure_path(template, path, ts, batches, runtime, wd=wd, progress=progress)
