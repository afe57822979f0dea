"""The plane through three points of weight space (paper, Sec. 3 and Fig. 1).

Given the two endpoints ŵ1, ŵ2 and a bend θ, Gram-Schmidt gives an
orthonormal basis of the plane through them, with ŵ1 as origin:

    u = (ŵ2 − ŵ1) / ‖ŵ2 − ŵ1‖
    v = r / ‖r‖,  r = (θ − ŵ1) − ⟨θ − ŵ1, u⟩ u

and every point of the plane is w(α, β) = ŵ1 + α u + β v. Since u and v are
orthonormal, (α, β) are distances in weight space (a plot with equal axes
shows the true geometry). A quadratic Bezier curve (3 control points) lies in
this plane; longer curves leave it, and :func:`distance` says by how much.

The grid follows the official code: ``grid_points`` × ``grid_points`` points
covering the three points with a margin of ``margin`` × their extent on each
side (official default 21 × 21, margin 0.2). The geometry works on flat
vectors (see :mod:`modeconn.weights`) and is pure. :func:`measure_plane` takes
a curve's plane through ŵ1, ŵ2 and its middle bend θ (control point
(n − 1) // 2), projects the curve and the segment onto it, and measures the
network at ŵ1, ŵ2, θ and every grid point (:func:`modeconn.points.measure`:
BatchNorm recalibrated at each). An aligned segment ŵ1 → π(ŵ2)
(:mod:`modeconn.align`) is in general not in the plane: its orthogonal
projection is drawn, and its distance from the plane reported.

:func:`measure_points_plane` is the plane through any three networks (Fig. 1, left: three independently
trained endpoints), with the first as origin and the second along α; the same grid, measured the same way
(:func:`measure_grid`, the one loop over grid points), with the triangle's centroid measured beside the three.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .curves import Curve
from .data import EvalBatches
from .errors import ModeconnError
from .points import MEASURES, measure
from .runtime import CPU, Runtime
from .weights import flat, unflatten

POINTS = ("w1", "w2", "bend")


class Basis(NamedTuple):
    origin: torch.Tensor  # (D,) ŵ1
    u: torch.Tensor  # (D,) unit vector towards ŵ2
    v: torch.Tensor  # (D,) unit vector, orthogonal to u, towards θ
    coords: torch.Tensor  # (3, 2) (α, β) of ŵ1, ŵ2, θ


def basis(w1: torch.Tensor, w2: torch.Tensor, theta: torch.Tensor, names: Sequence[str] | None = None) -> Basis:
    """Orthonormal basis of the plane through ``w1``, ``w2``, ``theta`` (flat vectors, computed in float64).

    Raises a ModeconnError when the three points do not span a plane (the
    endpoints coincide, or the bend lies on the segment, e.g. an untrained curve); with ``names`` (any three
    points, not a curve's), the message names the points.
    """
    w1, w2, theta = (x.detach().double().reshape(-1) for x in (w1, w2, theta))
    if not (w1.shape == w2.shape == theta.shape):
        raise ModeconnError(
            f"plane: the three points have different sizes ({w1.numel()}, {w2.numel()}, {theta.numel()})"
        )
    d = w2 - w1
    dx = d.norm()
    if dx == 0:
        if names is not None:
            raise ModeconnError(f"plane: {names[0]} and {names[1]} are the same point; they span no plane")
        raise ModeconnError("plane: the two endpoints are the same point; they span no plane")
    u = d / dx
    r = theta - w1
    r = r - (r @ u) * u
    dy = r.norm()
    if dy <= 1e-5 * max(dx.item(), (theta - w1).norm().item()):  # float32 rounding of a point on the segment
        if names is not None:
            raise ModeconnError(
                f"plane: {names[2]} lies on the line through {names[0]} and {names[1]} (or coincides with one of "
                "them), so the three points span no plane"
            )
        raise ModeconnError(
            "plane: the bend lies on the segment between the endpoints (is the curve trained? "
            "curve.init = linear puts the bends on the segment), so the three points span no plane"
        )
    v = r / dy
    coords = torch.stack(
        [
            torch.zeros(2, dtype=torch.float64),
            torch.stack([dx, torch.zeros((), dtype=torch.float64)]),
            torch.stack([(theta - w1) @ u, dy]),
        ]
    )
    return Basis(w1, u, v, coords)


def project(w: torch.Tensor, origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plane coordinates (α, β) of ``w`` [D] → [2], or of a stack [P, D] → [P, 2] (orthogonal projection)."""
    x = w.detach().double() - origin  # (..., D)
    return torch.stack([x @ u, x @ v], dim=-1)


def distance(w: torch.Tensor, origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of ``w`` [D] (or each row of [P, D]) from the plane."""
    x = w.detach().double() - origin
    ab = project(w, origin, u, v)  # (..., 2)
    return (x - ab[..., :1] * u - ab[..., 1:] * v).norm(dim=-1)


def grid(coords: torch.Tensor, grid_points: int = 21, margin: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """α and β axes [grid_points] spanning ``coords`` [P, 2] plus ``margin`` × the extent on each side.

    An axis along which all points agree (zero extent) gets the other axis's
    extent, so the grid is never degenerate.
    """
    if grid_points < 2:
        raise ModeconnError(f"plane: a grid needs at least 2 points per axis, got {grid_points}")
    coords = coords.double().reshape(-1, 2)
    lo, hi = coords.min(0).values, coords.max(0).values  # (2,)
    extent = hi - lo
    extent = torch.where(extent > 0, extent, extent.max())
    lo, hi = lo - margin * extent, hi + margin * extent
    alpha = torch.linspace(lo[0].item(), hi[0].item(), grid_points, dtype=torch.float64)
    beta = torch.linspace(lo[1].item(), hi[1].item(), grid_points, dtype=torch.float64)
    return alpha, beta


def point(origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The flat vector w(α, β) = origin + α u + β v."""
    return origin + a * u + b * v


def to_weights(
    origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor, a: float, b: float, like: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """w(α, β) as a weight dict with the names, shapes, dtypes and devices of ``like`` (in its order)."""
    return unflatten(point(origin, u, v, a, b), like)


@dataclass
class PlaneGrid:
    """A plane measured on a grid: the basis, the axes, the grid of each measure and the named points (the three
    that span it, in the order of ``basis.coords``, then any other measured point, e.g. the centroid)."""

    basis: Basis
    alpha: torch.Tensor  # (G,)
    beta: torch.Tensor  # (G,)
    grids: dict[str, torch.Tensor]  # measure of MEASURES → (G, G), indexed [α, β]
    points: dict[str, dict[str, float]]  # name → alpha, beta and the measures there

    def names(self) -> tuple[str, str, str]:
        """The three points that span the plane, in the order of ``basis.coords``."""
        return tuple(self.points)[:3]

    def as_dict(self) -> dict:
        """The grid and the points as a dict of tensors and names (format ``modeconn.plane_points/1``): ``points``
        the three names, ``coords`` [3, 2] their (α, β), ``centroid`` [2] where it was measured."""
        centroid = {"centroid": torch.tensor([self.points["centroid"][k] for k in ("alpha", "beta")])}
        return {
            "format": "modeconn.plane_points/1",
            "alpha": self.alpha,
            "beta": self.beta,
            **self.grids,
            "points": self.names(),
            "coords": self.basis.coords,
            **(centroid if "centroid" in self.points else {}),
        }

    def extent(self) -> dict[str, list[float]]:
        """The grid's first and last α and β."""
        return {
            "alpha": [self.alpha[0].item(), self.alpha[-1].item()],
            "beta": [self.beta[0].item(), self.beta[-1].item()],
        }

    def summary(self) -> dict:
        """Each measure's range over the grid, the named points, and the distance between each pair of the three
        (the triangle's sides)."""
        names, c = self.names(), self.basis.coords
        sides = {f"{names[i]} to {names[j]}": (c[i] - c[j]).norm().item() for i, j in ((0, 1), (0, 2), (1, 2))}
        return {
            "grid": {m: {"min": g.min().item(), "max": g.max().item()} for m, g in self.grids.items()},
            "points": self.points,
            "distances": sides,
        }


@dataclass
class PlaneResult(PlaneGrid):
    """The plane of a curve measured on a grid: the basis, the axes, the grid of each measure, the three
    points (w1, w2, bend), and the curve, its segment (and an aligned segment) projected onto the plane at the t
    grid."""

    t: torch.Tensor  # (P,) float64
    curve: torch.Tensor  # (P, 2) (α, β) of φ(t)
    segment: torch.Tensor  # (P, 2) (α, β) of (1 − t) ŵ1 + t ŵ2
    curve_off_plane: torch.Tensor  # (P,) distance of φ(t) from the plane
    bend_index: int
    num_bends: int
    kind: str
    aligned: torch.Tensor | None = None  # (P, 2) (α, β) of the aligned segment's projection
    aligned_off_plane: torch.Tensor | None = None  # (P,) its distance from the plane, t · dist(π(ŵ2))
    aligned_distance: float | None = None  # ‖π(ŵ2) − ŵ1‖

    def as_dict(self) -> dict:
        """The grid and the projections as a dict of tensors and numbers (format ``modeconn.plane/1``)."""
        aligned = {"aligned": self.aligned, "aligned_off_plane": self.aligned_off_plane}
        return {
            "format": "modeconn.plane/1",
            "alpha": self.alpha,
            "beta": self.beta,
            **self.grids,
            "points": POINTS,
            "coords": self.basis.coords,
            "t": self.t,
            "curve": self.curve,
            "segment": self.segment,
            "curve_off_plane": self.curve_off_plane,
            "bend_index": self.bend_index,
            "num_bends": self.num_bends,
            "kind": self.kind,
            **(aligned if self.aligned is not None else {}),
        }

    def summary(self) -> dict:
        """Each measure's range over the grid, the three points, how far the curve (and the aligned segment,
        whose projection is drawn, not the path) leaves the plane, and ‖ŵ2 − ŵ1‖."""
        scale = self.basis.coords[1, 0].item()  # ‖ŵ2 − ŵ1‖
        off = self.curve_off_plane.max().item()
        out = {
            "grid": {m: {"min": g.min().item(), "max": g.max().item()} for m, g in self.grids.items()},
            "points": self.points,
            "curve_off_plane": {"max_distance": off, "max_relative": off / scale},
            "endpoint_distance": scale,
        }
        if self.aligned is not None:
            off = self.aligned_off_plane.max().item()
            out["aligned_off_plane"] = {
                "max_distance": off,
                "max_relative": off / scale,
                "endpoint_alpha": self.aligned[-1, 0].item(),
                "endpoint_beta": self.aligned[-1, 1].item(),
                "endpoint_distance": self.aligned_distance,
            }
        return out


def measure_plane(
    curve: Curve,
    template: nn.Module,
    ts: torch.Tensor,
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    grid_points: int = 21,
    margin: float = 0.2,
    wd: float = 0.0,
    aligned_end: dict[str, torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PlaneResult:
    """The plane of ``curve`` (through ŵ1, ŵ2 and the bend (n − 1) // 2) measured on a ``grid_points`` ×
    ``grid_points`` grid covering the three points and the curve projected at ``ts`` [P], with ``margin`` ×
    their extent on each side.

    ``template`` (the curve's architecture, on the runtime's device) is measured at ŵ1, ŵ2, θ and every grid
    point on ``batches`` (train and test; BatchNorm recalibrated at each point; the train loss with
    0.5·``wd``·‖w‖²). ``aligned_end``: π(ŵ2) as parameters, to project the aligned segment ŵ1 → π(ŵ2).
    ``progress(message)`` is called after each point measured (G² + 3 calls).
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)  # (P,)
    points = curve.control_points()  # name -> (n, *shape)
    n, bend = curve.num_bends, (curve.num_bends - 1) // 2
    like = {k: v[0] for k, v in points.items()}
    w1, w2, theta = (flat({k: v[i] for k, v in points.items()}) for i in (0, n - 1, bend))
    b = basis(w1, w2, theta)
    frame = (b.origin, b.u, b.v)
    curve_xy, segment_xy, off_plane = [], [], []  # one point at a time: P × |net| may not fit in memory
    for t in ts.tolist():
        with torch.no_grad():
            w = flat(curve.weights(t))
        curve_xy.append(project(w, *frame))
        off_plane.append(distance(w, *frame))
        segment_xy.append(project((1 - t) * b.origin + t * w2.double(), *frame))
    curve_xy, segment_xy, off_plane = torch.stack(curve_xy), torch.stack(segment_xy), torch.stack(off_plane)
    # (P, 2), (P, 2), (P,)
    alpha, beta = grid(torch.cat([b.coords, curve_xy]), grid_points, margin)
    aligned = {}
    if aligned_end is not None:  # (1 − t) ŵ1 + t π(ŵ2), ŵ1 the origin: projection and distance linear in t
        end = flat(aligned_end)
        xy, off = project(end, *frame), distance(end, *frame)  # (2,), ()
        aligned = {
            "aligned": ts[:, None] * xy,
            "aligned_off_plane": ts * off,
            "aligned_distance": (end.double() - w1.double()).norm().item(),
        }

    named = dict(zip(POINTS, b.coords.tolist()))
    grids, at_points = measure_grid(template, b, alpha, beta, named, like, batches, runtime, wd=wd, progress=progress)
    return PlaneResult(
        b, alpha, beta, grids, at_points, ts, curve_xy, segment_xy, off_plane, bend, n, curve.kind, **aligned
    )


def measure_grid(
    template: nn.Module,
    b: Basis,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    named: Mapping[str, Sequence[float]],
    like: dict[str, torch.Tensor],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """``template`` measured at the ``named`` points (name → (α, β)), in their order, then at every point of the
    grid ``alpha`` × ``beta`` ([G], [G']), row by row: (grids, points), each measure of MEASURES → [G, G'] indexed
    [α, β], and each name → its alpha, beta and measures. A point w(α, β) of the plane of ``b`` has the names,
    shapes, dtypes of ``like`` (on the runtime's device); BatchNorm is recalibrated at each on ``batches`` (their
    validation split unused); the train loss has 0.5·``wd``·‖w‖². ``progress(message)`` after each point."""
    like = {k: v.to(runtime.device) for k, v in like.items()}
    batches = batches._replace(val=None)

    def at(a: float, bb: float) -> dict:
        return measure(template, to_weights(b.origin, b.u, b.v, a, bb, like), batches, runtime).row(wd)

    grids = {m: torch.full((len(alpha), len(beta)), float("nan"), dtype=torch.float64) for m in MEASURES}
    at_points = {}
    for name, (a, bb) in named.items():
        at_points[name] = {"alpha": a, "beta": bb, **at(a, bb)}
        if progress is not None:
            progress(f"{name}: test err {at_points[name]['test_error']:.4f}")
    for i, a in enumerate(alpha.tolist()):
        for j, bb in enumerate(beta.tolist()):
            r = at(a, bb)
            for m in MEASURES:
                grids[m][i, j] = r[m]
            if progress is not None:
                progress(f"α={a:.2f} β={bb:.2f} train loss {r['train_loss']:.3f} test err {r['test_error']:.3f}")
    return grids, at_points


def measure_points_plane(
    points: Mapping[str, dict[str, torch.Tensor]],
    template: nn.Module,
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    grid_points: int = 21,
    margin: float = 0.2,
    wd: float = 0.0,
    centroid: bool = True,
    progress: Callable[[str], None] | None = None,
) -> PlaneGrid:
    """The plane through three networks (Fig. 1, left) measured on a ``grid_points`` × ``grid_points`` grid
    covering them with ``margin`` × their extent on each side.

    ``points``: three names → parameters of ``template`` (``dict(model.named_parameters())``, no buffers), in
    order: the first is the origin, the second lies along α, the third at β > 0. Each is measured at its exact
    coordinates, then (``centroid``) their mean as ``centroid``, then every grid point, on ``batches`` (BatchNorm
    recalibrated at each; the train loss with 0.5·``wd``·‖w‖²). ``progress(message)`` after each point
    (G² + 4 calls, G² + 3 without the centroid). A ModeconnError where the three span no plane.
    """
    if len(points) != 3 or (centroid and "centroid" in points):
        raise ModeconnError(f"plane: three points other than 'centroid' span the plane, got {', '.join(points)}")
    names = tuple(points)
    like = dict(points[names[0]])
    b = basis(*(flat(points[n]) for n in names), names=names)
    alpha, beta = grid(b.coords, grid_points, margin)
    named = dict(zip(names, b.coords.tolist()))
    if centroid:
        named["centroid"] = b.coords.mean(0).tolist()
    grids, at_points = measure_grid(template, b, alpha, beta, named, like, batches, runtime, wd=wd, progress=progress)
    return PlaneGrid(b, alpha, beta, grids, at_points)
