"""Parametric curves between two networks in weight space (paper, Sec. 3).

A curve φ_θ: [0, 1] → R^|net| with φ_θ(0) = ŵ1 and φ_θ(1) = ŵ2 is a weighted
sum of control points ("bends") θ_0 = ŵ1, θ_1 … θ_{n−2}, θ_{n−1} = ŵ2:

    φ_θ(t) = Σ_k c_k(t) θ_k

- Bezier: Bernstein coefficients c_k(t) = C(n−1, k) t^k (1−t)^(n−1−k).
  With n = 3 this is the quadratic curve (1−t)² ŵ1 + 2t(1−t) θ + t² ŵ2.
- Polygonal chain: hat functions, piecewise linear through the bends at
  t = k/(n−1); c_k(t) = max(0, 1 − |(n−1)t − k|).
- Segment: n = 2, (1−t) ŵ1 + t ŵ2 (either family); nothing to train.

:class:`Curve` works on any ``nn.Module`` (DESIGN decision 1): it keeps, per
parameter of a template network, the endpoints as fixed buffers and the
interior bends as one trainable tensor ``[n − 2, P]`` over all P weights of
the network, and runs the template at φ_θ(t) by putting views of the flat
point in its parameter slots for the forward (what ``torch.func.functional_call``
does, with less overhead per step). No curve layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, ConfigError
from .io import atomic_torch_save, load_file

KINDS = ("bezier", "polychain")


def bezier_coefficients(t: float | torch.Tensor, num_bends: int) -> torch.Tensor:
    """Bernstein basis [..., n] at t (scalar or tensor of any shape)."""
    t = torch.as_tensor(t, dtype=torch.float64)[..., None]
    k = torch.arange(num_bends, dtype=torch.float64)
    binom = torch.tensor([math.comb(num_bends - 1, i) for i in range(num_bends)], dtype=torch.float64)
    return binom * t**k * (1 - t) ** (num_bends - 1 - k)


def polychain_coefficients(t: float | torch.Tensor, num_bends: int) -> torch.Tensor:
    """Hat functions [..., n] at t: piecewise linear, 1 at bend k's t = k/(n−1)."""
    t = torch.as_tensor(t, dtype=torch.float64)[..., None]
    k = torch.arange(num_bends, dtype=torch.float64)
    return (1 - ((num_bends - 1) * t - k).abs()).clamp(min=0)


COEFFICIENTS = {"bezier": bezier_coefficients, "polychain": polychain_coefficients}


def check_curve_args(kind: str, num_bends: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"curve.type {kind!r} unknown; use one of {', '.join(KINDS)}")
    if not isinstance(num_bends, int) or num_bends < 3:
        raise ConfigError(
            f"curve.num_bends = {num_bends!r}: a {kind} needs at least 3 bends counting the two endpoints "
            "(3 = one trainable bend; the straight segment is evaluated separately)"
        )


class FlatPoints(nn.Module):
    """Control points in the weight space of ``template``, each one flat vector [P], and the template run at a
    point Σ_k c_k θ_k of them through its own parameter slots: what :class:`Curve` and
    :class:`modeconn.simplex.Simplex` share (DESIGN decision 1: other coefficients, not a second implementation).

    A subclass keeps its control points — fixed buffers and one trainable tensor [m, P] — and says where they
    are: :meth:`rows` lists every control point in the order of the coefficients, :meth:`trainable` is the
    trainable tensor, :meth:`trainable_coefficients` picks the coefficients of its m rows from a list of all of
    them, :meth:`_differentiable` says whether a point needs a gradient.
    """

    def _adopt(self, template: nn.Module) -> None:
        """Keep ``template`` (its parameters frozen: the control points are what trains) and its flat layout."""
        self.template = template
        for p in template.parameters():
            p.requires_grad_(False)
        params = dict(template.named_parameters())
        self.names = list(params)
        self.shapes = [tuple(p.shape) for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.nhwc = [False] * len(self.names)  # conv weights stored (O, H, W, I): see use_channels_last

    def rows(self) -> list[torch.Tensor]:
        """Every control point [P], in the order of the coefficients (trainable ones detached)."""
        raise NotImplementedError

    def trainable(self) -> nn.Parameter:
        """The trainable control points [m, P]."""
        raise NotImplementedError

    def trainable_coefficients(self, c: list[float]) -> list[float]:
        """The coefficients of the rows of :meth:`trainable`, in their order, out of all of ``c``."""
        raise NotImplementedError

    def _differentiable(self) -> bool:
        raise NotImplementedError

    def combine(self, c: list[float]) -> torch.Tensor:
        """Σ_k c_k θ_k as a new flat float32 vector [P], without autograd: one scaled copy and one in-place
        add per further control point (elementwise: about twice as fast on this CPU as the ``addmv`` it
        replaced, docs/speed.md). Control points with c_k = 0 (the far end at t = 0 or 1, the hats of a
        chain away from t) are skipped, so φ_θ(0) and φ_θ(1) are the endpoints exactly."""
        with torch.no_grad():
            rows = self.rows()
            with torch.autocast(rows[0].device.type, enabled=False):
                terms = [(ck, row) for ck, row in zip(c, rows) if ck != 0.0] or [(0.0, rows[0])]
                (c0, first), rest = terms[0], terms[1:]
                w = first.clone() if c0 == 1.0 else torch.mul(first, c0)
                for ck, row in rest:
                    w.add_(row, alpha=ck)
        return w

    def run_at(self, x: torch.Tensor, c: list[float], l2: bool = False):
        """The template's output at Σ_k c_k θ_k; with ``l2``, also the point's squared norm (one reduction).
        With autograd on, the point and its norm come from :class:`_CurvePoint`."""
        if self._differentiable():
            *params, sq_norm = _CurvePoint.apply(self, l2, c, self.trainable())
            logits = self.run_template(x, params)
            return (logits, sq_norm) if l2 else logits
        w = self.combine(c)
        logits = self.run_template(x, w)
        if not l2:
            return logits
        with torch.autocast(w.device.type, enabled=False):  # ‖φ‖² in float32, as the point itself
            return logits, torch.dot(w, w)

    def unflat(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector [P] in this layout as the template's parameter dict (views, no copy)."""
        out = {}
        for n, v, shape, nhwc in zip(self.names, w.split(self.sizes), self.shapes, self.nhwc):
            if nhwc:
                o, i, h, k = shape
                out[n] = v.view(o, h, k, i).permute(0, 3, 1, 2)  # (O, I, H, W) with channels_last strides
            else:
                out[n] = v.view(shape)
        return out

    def strided_layout(self) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
        """(shape, strides, offset) of each parameter inside a contiguous flat vector [P] in this layout:
        :meth:`unflat`'s views (read off a meta tensor), as arguments of ``as_strided`` — one call per parameter
        instead of a split, a view and a permute. Cached per memory layout."""
        key = tuple(self.nhwc)
        cached = self.__dict__.get("_layout_cache")
        if cached is None or cached[0] != key:
            probe = torch.empty(sum(self.sizes), device="meta")
            layout = [(tuple(v.shape), v.stride(), v.storage_offset()) for v in self.unflat(probe).values()]
            cached = self.__dict__["_layout_cache"] = (key, layout)
        return cached[1]

    def _relayout(self, flat: torch.Tensor, to_nhwc: bool) -> torch.Tensor:
        """Rows [.., P] from the contiguous layout of the 4-D parameters to this one (or back)."""
        parts = []
        for v, shape, nhwc in zip(flat.split(self.sizes, dim=-1), self.shapes, self.nhwc):
            if nhwc:
                o, i, h, k = shape
                lead = v.shape[:-1]
                if to_nhwc:
                    v = v.reshape(*lead, o, i, h, k).movedim(-3, -1)  # (.., O, H, W, I)
                else:
                    v = v.reshape(*lead, o, h, k, i).movedim(-1, -3)  # (.., O, I, H, W)
                v = v.reshape(*lead, -1)
            parts.append(v)
        return torch.cat(parts, dim=-1)

    def _slots(self) -> list[tuple[nn.Module, str, int, nn.Parameter]]:
        """Every place a parameter of the template sits — (module, attribute, index into :attr:`names`, the
        parameter) — tied parameters once per module that holds them. Cached; rebuilt when the template's
        modules changed (e.g. BatchNorm converted to SyncBatchNorm after the curve was made)."""
        modules = tuple(map(id, self.template.modules()))
        modules_then, slots = self.__dict__.get("_slot_cache", ((), None))
        if (
            slots is None
            or modules != modules_then
            or any(module._parameters.get(attr) is not p for module, attr, _, p in slots)
        ):
            position = {name: i for i, name in enumerate(self.names)}
            current = dict(self.template.named_parameters())
            if list(current) != self.names:
                raise ConfigError(
                    f"the curve's template has changed its parameters since the curve was made ({len(current)} "
                    f"now, {len(self.names)} then): make the curve again from the changed network"
                )
            index = {id(p): position[name] for name, p in current.items()}
            slots = []
            for name, p in self.template.named_parameters(remove_duplicate=False):
                owner, _, attr = name.rpartition(".")
                slots.append((self.template.get_submodule(owner), attr, index[id(p)], p))
            self.__dict__["_slot_cache"] = (modules, slots)
        return slots

    def run_template(self, x: torch.Tensor, w: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The template's output with its parameters replaced by the flat point ``w`` (views of it), or by
        the tensors of ``w`` when it is a list in :attr:`names` order.

        What ``torch.func.functional_call`` does, in a fraction of its time per call (a curve step pays it
        every batch; docs/speed.md has the curve step against a plain one): the tensors are put
        in the modules' parameter slots for the forward and the parameters put back after it, also on error.
        """
        views = list(self.unflat(w).values()) if isinstance(w, torch.Tensor) else w
        slots = self._slots()
        try:
            for module, attr, i, _ in slots:
                module._parameters[attr] = views[i]
            return self.template(x)
        finally:
            for module, attr, _, p in slots:
                module._parameters[attr] = p


class Curve(FlatPoints):
    """A curve of ``kind`` with ``num_bends`` control points between two weight sets of ``template``.

    ``start`` and ``end`` map each parameter name of ``template`` to a tensor
    (e.g. two endpoint state dicts). The template's buffers (BatchNorm running
    statistics) are shared by all t and must be recalibrated per point
    (:mod:`modeconn.bn`). ``num_bends = 2`` gives the segment (no trainable bend).

    Storage: every parameter of the template is one slice of a flat vector of
    length P (the template's parameter count, in ``named_parameters`` order).
    The endpoints are the buffers ``start`` and ``end`` [P]; the interior
    bends are one trainable tensor ``bends`` [n − 2, P]. φ_θ(t) is then n
    elementwise passes over the flat vector, its squared norm one reduction and
    their backward two more passes, whatever the number of layers (the paper's
    O(|net|) overhead, in a few kernel calls: :class:`_CurvePoint`).
    """

    def __init__(
        self,
        template: nn.Module,
        start: dict[str, torch.Tensor],
        end: dict[str, torch.Tensor],
        kind: str = "bezier",
        num_bends: int = 3,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"curve.type {kind!r} unknown; use one of {', '.join(KINDS)}")
        if num_bends < 2:
            raise ConfigError(f"curve.num_bends = {num_bends}: a path needs at least its 2 endpoints")
        self.kind, self.num_bends = kind, num_bends
        check_compatible(template, start, "start")
        check_compatible(template, end, "end")
        self._adopt(template)
        a = torch.cat([start[n].detach().float().reshape(-1) for n in self.names])  # (P,)
        b = torch.cat([end[n].detach().float().reshape(-1) for n in self.names])  # (P,)
        self.register_buffer("start", a)
        self.register_buffer("end", b)
        # Interior bends initialised on the segment: θ_k = ŵ1 + k/(n−1) (ŵ2 − ŵ1).
        s = torch.arange(1, num_bends - 1, dtype=a.dtype) / (num_bends - 1)  # (n-2,)
        self.bends = nn.Parameter(a + s[:, None] * (b - a))  # (n-2, P)

    def coefficients(self, t: float) -> torch.Tensor:
        return COEFFICIENTS[self.kind](t, self.num_bends).float()

    def coefficient_list(self, t: float) -> list[float]:
        """:meth:`coefficients` as Python floats (float64 arithmetic, no tensor op: a training step's φ_θ(t))."""
        n = self.num_bends - 1
        if self.kind == "bezier":
            return [math.comb(n, k) * t**k * (1 - t) ** (n - k) for k in range(n + 1)]
        return [max(0.0, 1 - abs(n * t - k)) for k in range(n + 1)]

    def rows(self) -> list[torch.Tensor]:
        """ŵ1, the bends (detached), ŵ2: the control points in the order of the coefficients."""
        return [self.start, *self.bends.detach(), self.end]

    def trainable(self) -> nn.Parameter:
        return self.bends

    def trainable_coefficients(self, c: list[float]) -> list[float]:
        """The coefficients of the interior bends."""
        return c[1:-1]

    def _differentiable(self) -> bool:
        """Whether φ_θ(t) needs a gradient: autograd on and trainable bends (a segment has none)."""
        return torch.is_grad_enabled() and self.bends.requires_grad and self.num_bends > 2

    def point(self, t: float) -> torch.Tensor:
        """φ_θ(t) as one flat float32 vector [P], differentiable w.r.t. the bends when autograd is on.

        The same sum, in the same order, as :meth:`combine` (which skips the terms with c_k = 0: equal bit for
        bit unless a skipped control point holds inf or NaN, up to the sign of a zero). Autocast is off
        here: under bf16 autocast the weighted sum stays in float32 and the forward pass casts what it needs.
        A training step goes through :meth:`forward`, whose :class:`_CurvePoint` has a cheaper backward.
        """
        c = self.coefficient_list(float(t))  # plain numbers: no tensor op for the coefficients
        if not self._differentiable():
            return self.combine(c)
        with torch.autocast(self.start.device.type, enabled=False):
            w = torch.mul(self.start, c[0])
            for k, ck in enumerate(c[1:-1]):
                w = w.add(self.bends[k], alpha=ck)
            return w.add(self.end, alpha=c[-1])

    @torch.no_grad()
    def use_channels_last(self) -> None:
        """Store every 4-D (conv) weight in (O, H, W, I) order, so that φ_θ(t) hands the network conv weights
        with channels_last strides, without a copy (what :meth:`Runtime.prepare` asks for channels_last)."""
        if all(nhwc or len(shape) != 4 for nhwc, shape in zip(self.nhwc, self.shapes)):
            return
        plain = self._relayout(torch.cat([self.start[None], self.bends, self.end[None]]), to_nhwc=False)  # (n, P)
        self.nhwc = [len(shape) == 4 for shape in self.shapes]
        stack = self._relayout(plain, to_nhwc=True)
        self.start.copy_(stack[0])
        self.end.copy_(stack[-1])
        self.bends.copy_(stack[1:-1])

    def weights(self, t: float) -> dict[str, torch.Tensor]:
        """φ_θ(t) as a dict name → tensor (views of :meth:`point`), always in float32."""
        return self.unflat(self.point(t))

    def forward(self, x: torch.Tensor, t: float, l2: bool = False):
        """The template's output at φ_θ(t); with ``l2``, also ‖φ_θ(t)‖² (one reduction over the flat point).

        The whole step goes through here, so that DistributedDataParallel can wrap a curve. With autograd on,
        the point and its norm come from :class:`_CurvePoint` (:meth:`FlatPoints.run_at`)."""
        return self.run_at(x, self.coefficient_list(float(t)), l2)

    @torch.no_grad()
    def state_at(self, t: float) -> dict[str, torch.Tensor]:
        """An ordinary state dict of the template at φ_θ(t) (with the template's current buffers): to export the
        point as a checkpoint. To measure it, pass the parameters :meth:`weights` to :mod:`modeconn.points` or
        :mod:`modeconn.path` (BatchNorm is recalibrated there; a state dict's buffers are refused)."""
        state = {k: v.detach().clone() for k, v in self.template.state_dict().items()}
        state.update({k: v.detach().clone() for k, v in self.weights(t).items()})
        return state

    def endpoint(self, which: int) -> dict[str, torch.Tensor]:
        """ŵ1 (``which = 0``) or ŵ2 (``which = -1``) as a parameter dict."""
        return self.unflat((self.start if which == 0 else self.end).detach())

    def control_points(self) -> dict[str, torch.Tensor]:
        """Per parameter, the stacked control points [n, *shape] (endpoints included), contiguous."""
        stack = self._relayout(torch.cat([self.start[None], self.bends.detach(), self.end[None]]), to_nhwc=False)
        return {
            n: v.reshape(self.num_bends, *shape)
            for n, v, shape in zip(self.names, stack.split(self.sizes, dim=1), self.shapes)
        }

    def load_control_points(self, points: dict[str, torch.Tensor], source: str = "<curve>") -> None:
        """Set the interior bends from stacked control points (as saved by :meth:`control_points`)."""
        missing = [n for n in self.names if n not in points]
        if missing:
            raise CheckpointError(
                f"{source}: control points missing for {missing[:3]}…; was it made for another model?"
            )
        for name, shape in zip(self.names, self.shapes):
            if tuple(points[name].shape) != (self.num_bends, *shape):
                raise CheckpointError(
                    f"{source}: control points of {name} have shape {tuple(points[name].shape)}, expected "
                    f"{(self.num_bends, *shape)} (curve.num_bends or the model differ)"
                )
        flat = torch.cat([points[n].reshape(self.num_bends, -1) for n in self.names], dim=1)  # (n, P)
        with torch.no_grad():
            self.bends.copy_(self._relayout(flat[1:-1].to(self.bends.device), to_nhwc=True))


class _CurvePoint(torch.autograd.Function):
    """φ_θ(t) = Σ_k c_k θ_k as the template's parameter tensors, and ‖φ_θ(t)‖², for a training step.

    ``apply(curve, l2, c, bends)`` returns one tensor per parameter of the template, in :attr:`Curve.names`
    order (strided views of one flat float32 point in the curve's layout), and the squared norm (0-d; an
    empty tensor without ``l2``). The gradient is what autograd gives through :meth:`Curve.point`,
    :meth:`Curve.unflat` and ``dot``, in fewer passes over the P weights and far fewer autograd nodes (the
    cost a curve step adds to a plain step, docs/speed.md): the forward is :meth:`Curve.combine`
    (elementwise, no matrix-vector product), and the backward writes each parameter's gradient g straight
    into its slice of the bends' gradient as g + 2 · ∂L/∂‖φ‖² · φ (one ``addcmul``), then scales by c_k —
    instead of autograd's concatenation of the gradients, the norm's gradient, their sum and a matrix
    product.
    """

    @staticmethod
    def forward(ctx, curve: FlatPoints, l2: bool, c: list[float], bends: torch.Tensor):
        w = curve.combine(c)
        layout = curve.strided_layout()
        ctx.layout, ctx.inner, ctx.numel = layout, curve.trainable_coefficients(c), w.numel()
        with torch.autocast(w.device.type, enabled=False):
            sq_norm = torch.dot(w, w) if l2 else w.new_empty(0)
        if l2:
            ctx.save_for_backward(w)
        else:
            ctx.mark_non_differentiable(sq_norm)
        return (*(w.as_strided(shape, stride, offset) for shape, stride, offset in layout), sq_norm)

    @staticmethod
    @torch.autograd.function.once_differentiable  # a clear error under create_graph=True, not a wrong Hessian
    def backward(ctx, *grads: torch.Tensor):
        *grad_params, grad_sq = grads
        layout, inner = ctx.layout, ctx.inner
        grad = grad_params[0].new_empty((len(inner), ctx.numel))
        row = grad[0]  # the unscaled ∂L/∂φ first, scaled by c_k below
        if ctx.saved_tensors:
            (w,) = ctx.saved_tensors
            twice = grad_sq * 2
            for (shape, stride, offset), g in zip(layout, grad_params):
                torch.addcmul(g, w.as_strided(shape, stride, offset), twice, out=row.as_strided(shape, stride, offset))
        else:
            for (shape, stride, offset), g in zip(layout, grad_params):
                row.as_strided(shape, stride, offset).copy_(g)
        for k in range(len(inner) - 1, 0, -1):
            torch.mul(row, inner[k], out=grad[k])
        row.mul_(inner[0])
        return None, None, None, grad


def check_compatible(template: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """Raise CheckpointError unless ``state`` has every parameter of ``template`` with the right shape."""
    for name, p in template.named_parameters():
        if name not in state:
            raise CheckpointError(
                f"{label} weights lack parameter {name!r}: the endpoints are of different architectures"
            )
        if tuple(state[name].shape) != tuple(p.shape):
            raise CheckpointError(
                f"{label} weights: {name!r} has shape {tuple(state[name].shape)}, the template {tuple(p.shape)}: "
                "the endpoints are of different architectures or sizes"
            )


def curve_loss(curve: Curve, wd: float, generator: torch.Generator, module: nn.Module | None = None):
    """The paper's training objective as a ``loss_fn(x, y)`` for :func:`modeconn.train.train_epoch`.

    Each call draws t ~ U(0, 1) from ``generator`` and returns
    ``CE(f(x; φ_θ(t)), y) + 0.5 · wd · ‖φ_θ(t)‖²`` — an unbiased estimate of the
    gradient of ℓ(θ) = E_t L(φ_θ(t)). The optimiser's own weight decay must be 0.
    ``module`` is what runs the curve (e.g. ``curve`` wrapped in DistributedDataParallel; default ``curve``):
    every process of a data-parallel run draws the same t, from generators seeded alike.
    """
    run = module if module is not None else curve

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.rand((), generator=generator).item()
        if wd > 0:
            logits, sq_norm = run(x, t, l2=True)
            return F.cross_entropy(logits.float(), y) + 0.5 * wd * sq_norm, logits
        logits = run(x, t)  # no norm to form, keep or differentiate
        return F.cross_entropy(logits.float(), y), logits

    return loss_fn


def save_curve(path: Path | str, curve: Curve, spec: dict, **extra) -> None:
    """Write a curve (model spec, family, control points) atomically."""
    atomic_torch_save(
        {
            "format": "modeconn.curve/1",
            "spec": spec,
            "kind": curve.kind,
            "num_bends": curve.num_bends,
            "control_points": {k: v.cpu() for k, v in curve.control_points().items()},
            **extra,
        },
        path,
    )


def load_curve(
    path: Path | str,
    build_template: Callable[[dict], nn.Module],
    hint: str = "Fit it again and save it with save_curve.",
) -> tuple[Curve, dict]:
    """Read a curve written by :func:`save_curve`; ``build_template(spec)`` makes the network.

    ``hint`` ends the error message of a missing or corrupt file: how the caller's user makes it again.
    """
    blob = load_file(path, "curve file", hint)
    if not isinstance(blob, dict) or blob.get("format") != "modeconn.curve/1":
        raise CheckpointError(f"{path} is not a modeconn curve file. {hint}")
    points = blob["control_points"]
    template = build_template(blob["spec"])
    start = {k: v[0] for k, v in points.items()}
    end = {k: v[-1] for k, v in points.items()}
    curve = Curve(template, start, end, blob["kind"], blob["num_bends"])
    curve.load_control_points(points, str(path))
    return curve, blob


def segment_of(curve: Curve, template: nn.Module) -> Curve:
    """The straight segment between a curve's two endpoints, on its own template copy."""
    return Curve(template, curve.endpoint(0), curve.endpoint(-1), "bezier", 2)
