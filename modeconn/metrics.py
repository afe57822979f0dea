"""Summaries of a measure along a path in weight space (paper, Sec. 3).

For a measure f evaluated on a grid t_0 < … < t_m of a path φ: its values at
the ends, min, max, the mean over uniform t (trapezoidal rule in t), and the
integral with respect to arc length, ∫ f ds ≈ Σ ½(f_i + f_{i+1}) ‖φ(t_{i+1}) − φ(t_i)‖,
along with that integral divided by the length (the arc-length average).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def trapezoid(y: Sequence[float], x: Sequence[float]) -> float:
    return sum(0.5 * (y[i] + y[i + 1]) * (x[i + 1] - x[i]) for i in range(len(y) - 1))


def path_summary(t: Sequence[float], values: Sequence[float], arc: Sequence[float]) -> dict[str, float]:
    """Summary of ``values`` on the grid ``t`` with cumulative arc length ``arc`` (arc[0] = 0)."""
    if len(t) < 2 or not (len(t) == len(values) == len(arc)):
        raise ValueError("path_summary needs at least two grid points and equal-length inputs")
    span = t[-1] - t[0]
    length = arc[-1]
    integral = trapezoid(values, arc)
    return {
        "start": values[0],
        "end": values[-1],
        "min": min(values),
        "max": max(values),
        "mean_t": trapezoid(values, t) / span,
        "int_arc": integral,
        "mean_arc": integral / length if length > 0 else values[0],
    }


def path_summaries(rows: list[dict], arc: Sequence[float], measures: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`path_summary` of each of ``measures`` over the rows of one path (one row per grid t, in order)."""
    t = [r["t"] for r in rows]
    return {m: path_summary(t, [r[m] for r in rows], arc) for m in measures}


def length_ratio(curve: float, segment: float) -> dict[str, float]:
    """The lengths of a curve and of its segment, and their ratio (the paper: 1.30–2.13 for Bezier curves)."""
    return {"curve": curve, "segment": segment, "ratio": curve / segment if segment > 0 else math.nan}
