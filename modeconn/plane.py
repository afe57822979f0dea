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
side (official default 21 × 21, margin 0.2). Everything here works on flat
vectors (see :mod:`modeconn.weights`) and is pure; measuring the network
at a grid point is :func:`modeconn.paths.measure`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import ModeconnError
from .weights import unflatten


class Basis(NamedTuple):
    origin: torch.Tensor  # (D,) ŵ1
    u: torch.Tensor  # (D,) unit vector towards ŵ2
    v: torch.Tensor  # (D,) unit vector, orthogonal to u, towards θ
    coords: torch.Tensor  # (3, 2) (α, β) of ŵ1, ŵ2, θ


def basis(w1: torch.Tensor, w2: torch.Tensor, theta: torch.Tensor) -> Basis:
    """Orthonormal basis of the plane through ``w1``, ``w2``, ``theta`` (flat vectors, computed in float64).

    Raises a ModeconnError when the three points do not span a plane (the
    endpoints coincide, or the bend lies on the segment, e.g. an untrained curve).
    """
    w1, w2, theta = (x.detach().double().reshape(-1) for x in (w1, w2, theta))
    if not (w1.shape == w2.shape == theta.shape):
        raise ModeconnError(
            f"plane: the three points have different sizes ({w1.numel()}, {w2.numel()}, {theta.numel()})"
        )
    d = w2 - w1
    dx = d.norm()
    if dx == 0:
        raise ModeconnError("plane: the two endpoints are the same point; they span no plane")
    u = d / dx
    r = theta - w1
    r = r - (r @ u) * u
    dy = r.norm()
    if dy <= 1e-5 * max(dx.item(), (theta - w1).norm().item()):  # float32 rounding of a point on the segment
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
