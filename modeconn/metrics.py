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


def width_point(k: float, curve: dict, segment_length: float | None = None) -> dict[str, float]:
    """One point of the width experiment (paper, Sec. 4, Fig. 3) from the summaries of a curve's evaluation.

    ``curve`` holds :func:`path_summaries` of the curve (``train_loss``, ``train_nll``, ``test_error``)
    under ``"curve"`` and :func:`length_ratio` under ``"length"`` (the eval_curve stage's metrics). The
    barrier is the worst train loss along the curve minus the larger of the two endpoints' train losses,
    ``max_t L(φ(t)) − max(L(ŵ1), L(ŵ2))`` (0 when the curve is never worse than its ends); the same with the
    NLL alone (no 0.5·wd·‖w‖² term); and the length ratio ‖curve‖ / ‖ŵ2 − ŵ1‖.
    """
    c, length = curve["curve"], curve["length"]

    def barrier(measure: str) -> float:
        s = c[measure]
        return s["max"] - max(s["start"], s["end"])

    return {
        "k": k,
        "train_loss_barrier": barrier("train_loss"),
        "train_nll_barrier": barrier("train_nll"),
        "test_error_barrier": barrier("test_error"),
        "max_train_loss": c["train_loss"]["max"],
        "endpoint_train_loss": max(c["train_loss"]["start"], c["train_loss"]["end"]),
        "length_ratio": length["ratio"],
        "curve_length": length["curve"],
        "segment_length": length["segment"],
    }


def loss_barrier(t: Sequence[float], values: Sequence[float]) -> float:
    """The barrier of a measure along a path: max_t [f(t) − ((1 − s) f(t_0) + s f(t_m))], s = (t − t_0)/(t_m − t_0).

    The largest gap between the path's values and the straight line between its ends' values (Frankle et
    al. 2020; Ainsworth et al. 2023, Sec. 2); 0 when the path never rises above that line (it includes the
    ends, where the gap is 0, so it is never negative).
    """
    if len(t) < 2 or len(t) != len(values):
        raise ValueError("loss_barrier needs at least two grid points and as many values as points")
    t0, t1, f0, f1 = t[0], t[-1], values[0], values[-1]
    return max(f - (f0 + (ti - t0) / (t1 - t0) * (f1 - f0)) for ti, f in zip(t, values))
