"""Ensembles of an endpoint and one point of a path (paper, Sec. 4, Fig. 4).

For each t of a grid, the test error of the two-network ensemble {ŵ1, w(t)}, where w(t) is the point at t
on the curve, on the segment to ŵ2, or on a random ray from ŵ1 at the same distance as the curve point,
‖w(t) − ŵ1‖ = ‖φ(t) − ŵ1‖ (one random unit direction, drawn once from its own seed). The curve's and the
segment's predictions at the grid are given (:func:`modeconn.path.measure_path` made them); only the random
points are evaluated (BN recalibration, then the test set). On the curve the ensemble improves already at
small t: nearby points of the curve are different functions; on a random ray of the same length they are
not, or they are much worse networks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from . import ensemble
from .curves import Curve
from .data import EvalBatches
from .points import at_point
from .runtime import CPU, Runtime
from .train import predict
from .weights import flat, unflatten

PATHS = ("curve", "segment", "random")
SUMMARY_T = (0.1, 0.2, 0.3, 0.4, 0.5)


def random_direction(size: int, seed: int) -> torch.Tensor:
    """A unit vector [size] in float64, uniformly distributed on the sphere, from its own seeded generator.

    Fig. 4's baseline: the point at distance d from ŵ1 along it is ŵ1 + d · direction.
    """
    d = torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / d.norm()


def nearest_t(rows: list[dict], targets, keys) -> dict[str, dict]:
    """For each target t, the ``keys`` of the row whose ``t`` is nearest, keyed ``t=0.10`` by the grid's t."""
    out = {}
    for target in targets:
        r = min(rows, key=lambda r: abs(r["t"] - target))
        out[f"t={r['t']:.2f}"] = {"t": r["t"], **{k: r[k] for k in keys}}
    return out


@dataclass
class PathEnsembles:
    rows: pd.DataFrame  # one row per t: t, distance, <path>_error, <path>_point_error [, <path>_val_error]
    summary: dict  # the endpoints' errors, the ensembles near SUMMARY_T, each path's best (test [and val])


@torch.no_grad()
def path_ensembles(
    curve: Curve,
    template: nn.Module,
    ts: torch.Tensor,
    predictions: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    seed: int = 0,
    method: str = "probs",
    val_predictions: Mapping[str, torch.Tensor] | None = None,
    val_labels: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
) -> PathEnsembles:
    """Fig. 4: the ensemble of ŵ1 with the point at t of the curve, of the segment and of a random ray.

    ``predictions`` holds the test log-probabilities [P, N, K] of ``curve`` and ``segment`` at ``ts`` [P]
    (``ts[0] = 0``: ``predictions["curve"][0]`` is ŵ1's); ``val_predictions`` and ``val_labels`` the same on
    the validation split, for the same ensembles there. ``template`` (the curve's architecture, on the
    runtime's device) is measured at the random points on ``batches`` (BN recalibrated on ``batches.bn``).
    The random direction comes from ``seed``; members are combined by ``method`` (``probs`` or ``logits``).
    ``progress(message)`` is called after each t.
    """
    points = curve.control_points()
    like = {k: v[0] for k, v in points.items()}
    w1 = flat(like).double()  # (D,)
    direction = random_direction(w1.numel(), seed)  # (D,)
    like = {k: v.to(runtime.device) for k, v in like.items()}
    start = predictions["curve"][0]  # ŵ1's test log-probs
    val = val_predictions if val_labels is not None else None
    start_val = val["curve"][0] if val is not None else None
    rows = []
    for p, t in enumerate(torch.as_tensor(ts).tolist()):
        distance = (flat(curve.weights(t)).double() - w1).norm().item()
        if distance == 0:
            random_lp, random_val = start, start_val  # the random point is ŵ1 itself
        else:
            forward = at_point(template, unflatten(w1 + distance * direction, like), batches.bn, runtime)
            random_lp, _ = predict(forward, batches.test, runtime)  # (N, K)
            random_val = predict(forward, batches.val, runtime)[0] if val is not None else None
        members = {"curve": predictions["curve"][p], "segment": predictions["segment"][p], "random": random_lp}
        row = {"t": t, "distance": distance}
        for name, lp in members.items():
            row[f"{name}_error"] = ensemble.error(ensemble.combine([start, lp], method), labels)
        for name, lp in members.items():
            row[f"{name}_point_error"] = ensemble.error(lp, labels)
        if val is not None:  # the same ensembles on the validation split
            val_members = {"curve": val["curve"][p], "segment": val["segment"][p], "random": random_val}
            for name, lp in val_members.items():
                row[f"{name}_val_error"] = ensemble.error(ensemble.combine([start_val, lp], method), val_labels)
        rows.append(row)
        if progress is not None:
            progress(
                f"t={t:.2f} ensemble error curve {row['curve_error']:.4f} segment {row['segment_error']:.4f} "
                f"random {row['random_error']:.4f}"
            )
    summary = {
        "endpoint_error": rows[0]["curve_point_error"],
        "other_endpoint_error": rows[-1]["curve_point_error"],
        "endpoints_ensemble_error": rows[-1]["curve_error"],
        "by_t": nearest_t(rows, SUMMARY_T, [f"{name}_error" for name in PATHS]),
        "best": {name: min(r[f"{name}_error"] for r in rows) for name in PATHS},
    }
    if val is not None:
        summary["best_val"] = {name: min(r[f"{name}_val_error"] for r in rows) for name in PATHS}
    return PathEnsembles(pd.DataFrame(rows), summary)
