"""A path in weight space measured along t, and the summaries of a measure along it (paper, Sec. 3).

A path is a curve φ_θ (:class:`modeconn.curves.Curve`: its segment, a fitted curve, the aligned segment)
or any callable ``t ↦ parameters``. :func:`measure_path` measures it at a grid t_0 < … < t_m: at each
point BatchNorm is recalibrated, then the paper's measures (:data:`modeconn.points.MEASURES`), the test
set's expected calibration error and, with a validation split, the validation measures and the
temperature fitted there (Guo et al. 2017) are taken. For each measure f it summarises: its values at the
ends, min, max, the mean over uniform t (trapezoidal rule in t), and the integral with respect to arc length,
∫ f ds ≈ Σ ½(f_i + f_{i+1}) ‖φ(t_{i+1}) − φ(t_i)‖, along with that integral divided by the length (the
arc-length average); and its barrier, the largest rise above the straight line between its end values.
:func:`curve_metrics` puts a curve and its segment side by side: lengths, barriers, the ensembles of Sec. 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from . import calibration, ensemble
from .align import align_endpoints
from .curves import Curve
from .data import EvalBatches
from .points import MEASURES, VAL_MEASURES, check_parameters, measure
from .runtime import CPU, Runtime
from .weights import flat

Points = Curve | Callable[[float], dict[str, torch.Tensor]]


@dataclass
class PathResult:
    """A path measured at the grid ``t``: one row per t, the predictions there and the summaries."""

    rows: pd.DataFrame  # one row per t: t, MEASURES, test_ece [, VAL_MEASURES, temperature, test_*_scaled]
    t: torch.Tensor  # (P,) float32
    arc: torch.Tensor  # (P,) float32, cumulative length along the polyline through the points, arc[0] = 0
    length: float  # the path's length, arc[-1]
    logprobs: torch.Tensor  # (P, N, K) test log-probabilities
    val_logprobs: torch.Tensor | None  # (P, N_val, K) where there is a validation split
    labels: torch.Tensor  # (N,)
    val_labels: torch.Tensor | None  # (N_val,)
    summary: dict[str, dict[str, float]]  # measure → path_summary (start, end, min, max, mean_t, int_arc, mean_arc)
    barrier: dict[str, float]  # measure of MEASURES → loss_barrier

    def predictions(self) -> dict:
        """What a later ensemble needs without measuring again: the t grid, the test (and validation)
        log-probabilities at each t, and the arc length."""
        return {"t": self.t, "logprobs": self.logprobs, "val_logprobs": self.val_logprobs, "arc": self.arc}


def parameters_along(template: nn.Module, points: Points, ts: Sequence[float]) -> Iterator[tuple[float, dict]]:
    """(t, the path's parameters at t, detached) for each t of ``ts``: ``points`` is a Curve (its
    ``weights(t)``) or any ``t ↦ parameters`` of ``template``; a dict with buffers is refused
    (:func:`modeconn.points.check_parameters`)."""
    weights_at = points.weights if isinstance(points, Curve) else points
    for t in map(float, ts):
        weights = {k: v.detach() for k, v in weights_at(t).items()}
        check_parameters(template, weights)
        yield t, weights


@torch.no_grad()
def measure_path(
    template: nn.Module,
    points: Points,
    ts: Sequence[float],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> PathResult:
    """Measure the path ``points`` (a Curve, or ``t ↦ parameters`` of ``template``) at each t of ``ts``.

    Each point is recalibrated on ``batches.bn`` and measured on ``batches`` (:func:`modeconn.points.measure`);
    ``wd`` weighs the train loss's regulariser 0.5·wd·‖w‖². ``points(t)`` must give parameters only (a state
    dict with buffers is refused: :func:`modeconn.points.check_parameters`). ``progress(message)`` is called
    after each point.
    """
    ts = [float(t) for t in ts]
    rows, test_lp, val_lp, arc, prev, r = [], [], [], [0.0], None, None
    for t, weights in parameters_along(template, points, ts):
        point = flat(weights)
        if prev is not None:
            arc.append(arc[-1] + (point - prev).norm().item())
        prev = point
        r = measure(template, weights, batches, runtime)
        row = {"t": t, **r.row(wd)}
        row["test_ece"] = calibration.ece(r.test_logprobs, r.test_labels)  # 15 bins (Guo et al. 2017)
        if r.val_logprobs is not None:
            row["val_nll"] = ensemble.nll(r.val_logprobs, r.val_labels)
            row["val_error"] = ensemble.error(r.val_logprobs, r.val_labels)
            temp = ensemble.fit_temperature(r.val_logprobs, r.val_labels)
            row["temperature"] = temp
            row["test_nll_scaled"] = ensemble.nll(ensemble.scale(r.test_logprobs, temp), r.test_labels)
            row["test_ece_scaled"] = calibration.ece(ensemble.scale(r.test_logprobs, temp), r.test_labels)
            val_lp.append(r.val_logprobs)
        rows.append(row)
        test_lp.append(r.test_logprobs)
        if progress is not None:
            progress(f"t={t:.2f} test err {r.test_error:.4f}")
    stored_arc = torch.tensor(arc)
    measures = MEASURES + (VAL_MEASURES if val_lp else ())
    summary = path_summaries(rows, stored_arc.tolist(), measures)
    # the calibration of the points, before and after temperature scaling
    summary.update(
        path_summaries(rows, stored_arc.tolist(), [k for k in ("test_ece", "test_ece_scaled") if k in rows[0]])
    )
    return PathResult(
        rows=pd.DataFrame(rows),
        t=torch.tensor(ts),
        arc=stored_arc,
        length=arc[-1],
        logprobs=torch.stack(test_lp),
        val_logprobs=torch.stack(val_lp) if val_lp else None,
        labels=r.test_labels,
        val_labels=r.val_labels,
        summary=summary,
        barrier={m: loss_barrier(ts, [row[m] for row in rows]) for m in MEASURES},
    )


def measure_paths(
    paths: Mapping[str, Curve],
    ts: Sequence[float],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, PathResult]:
    """:func:`measure_path` of each of ``paths`` (name → a Curve: a fitted curve, a segment; each measured on its
    ``template``) in turn at ``ts``; ``progress(message)`` after each point, led by the path's name."""
    results = {}
    for name, path in paths.items():
        report = None if progress is None else (lambda message, name=name: progress(f"{name} {message}"))
        results[name] = measure_path(path.template, path, ts, batches, runtime, wd=wd, progress=report)
    return results


def aligned_segment(
    curve: Curve, make_template: Callable[[], nn.Module], example: torch.Tensor, seed: int = 0
) -> tuple[Curve, dict[str, torch.Tensor], dict[str, float]]:
    """The segment ŵ1 → π(ŵ2) between a curve's endpoints, ŵ2's hidden units permuted into line with ŵ1 by weight
    matching (Ainsworth et al. 2023; :func:`modeconn.align.align_endpoints`, on ``example`` inputs, ``seed``), on
    its own template from ``make_template()``: (the segment, the permutations, the numbers about them)."""
    w1, w2 = curve.endpoint(0), curve.endpoint(-1)
    w2_aligned, perms, alignment = align_endpoints(make_template(), w1, w2, example, seed=seed)
    return Curve(make_template(), w1, w2_aligned, "bezier", 2), perms, alignment


def curve_metrics(paths: Mapping[str, PathResult], method: str = "probs", alignment: dict | None = None) -> dict:
    """A curve against its segment: each path's summaries, the lengths and their ratio, each path's barriers,
    ``alignment`` (what :func:`modeconn.align.align_endpoints` reported, with the aligned path's length, where
    ``paths`` has one named ``aligned``) and the ensembles of Sec. 4 (:func:`modeconn.ensemble.curve_ensembles`;
    the curve points temperature-scaled too, on test, where there is a validation split to fit them on).

    ``paths`` holds ``curve`` and ``segment`` (measured at the same t grid), and any other path.
    """
    curve, segment = paths["curve"], paths["segment"]
    out: dict = {name: p.summary for name, p in paths.items()}
    out["length"] = length_ratio(curve.length, segment.length)
    out["barrier"] = {name: p.barrier for name, p in paths.items()}  # max_t [f(t) − ((1 − t) f(0) + t f(1))]
    if alignment is not None:
        out["alignment"] = {**alignment, "aligned_length": paths["aligned"].length}
    val = curve.val_labels is not None
    temps = curve.rows["temperature"].tolist() if val else None
    out["ensemble"] = ensemble.curve_ensembles(
        list(curve.logprobs), list(segment.logprobs), curve.labels, method, temps
    )
    if val:  # the same ensembles on the validation split (where the temperatures were fitted)
        out["ensemble_val"] = ensemble.curve_ensembles(
            list(curve.val_logprobs), list(segment.val_logprobs), curve.val_labels, method
        )
    return out


def path_table(paths: Mapping[str, PathResult]) -> pd.DataFrame:
    """The rows of every path in one table, with its name in a first column ``path``."""
    return pd.concat([p.rows.assign(path=name)[["path", *p.rows.columns]] for name, p in paths.items()])


def along_t_table(paths: Mapping[str, PathResult]) -> pd.DataFrame:
    """One row per t, the paths' :data:`MEASURES` side by side as ``<path>_<measure>`` columns."""
    return pd.concat(
        [p.rows.set_index("t")[list(MEASURES)].add_prefix(f"{name}_") for name, p in paths.items()], axis=1
    ).reset_index()


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


def loss_barrier(t: Sequence[float], values: Sequence[float]) -> float:
    """The barrier of a measure along a path: max_t [f(t) − ((1 − s) f(t_0) + s f(t_m))], s = (t − t_0)/(t_m − t_0).

    The largest gap between the path's values and the straight line between its ends' values (Entezari et
    al. 2022, Def. 1; Frankle et al. 2020 and Ainsworth et al. 2023 subtract the mean of the ends instead, see
    :mod:`modeconn.barriers`); 0 when the path never rises above that line (it includes the ends, where the gap
    is 0, so it is never negative).
    """
    if len(t) < 2 or len(t) != len(values):
        raise ValueError("loss_barrier needs at least two grid points and as many values as points")
    t0, t1, f0, f1 = t[0], t[-1], values[0], values[-1]
    return max(f - (f0 + (ti - t0) / (t1 - t0) * (f1 - f0)) for ti, f in zip(t, values))
