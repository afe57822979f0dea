"""The barrier of a path, as three papers define it, side by side: a barrier card.

Papers on mode connectivity measure "the barrier" along a path φ(t), t ∈ [0, 1] (a curve, a segment, an aligned
segment; φ(0) and φ(1) the endpoints), in three incompatible ways. For a measure f along the path (train loss,
test NLL, train or test error, each measured at φ(t)):

- **Worst value along the path** (Garipov et al. 2018: the train loss and test error along a curve and along
  its segment, judged by their highest point)::

      worst = max_t f(t),        worst_t = argmax_t f(t)

- **Error barrier height** (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket
  Hypothesis", ICML 2020, Sec. 2: "the maximum increase in error from the mean of the two endpoints")::

      barrier_mean_ends = max_t f(t) − ½ (f(0) + f(1))

  Two networks are *stable* (to SGD noise, "linearly mode connected") when the error barrier height is
  approximately 0, which they take to mean below 2%: ``barrier_mean_ends < 0.02`` on error fractions
  (:data:`STABLE_BELOW`, :func:`is_stable`). The verdict is given for the error measures only. Ainsworth, Hayase &
  Srinivasa ("Git Re-Basin", ICLR 2023, Sec. 2) define their loss barrier by the same formula on the loss (their
  code: ``max(loss_interp) − 0.5 * (loss_interp[0] + loss_interp[-1])``).

- **Loss barrier against linear interpolation of the endpoints' values** (Entezari, Sedghi, Saukh & Neyshabur,
  "The Role of Permutation Invariance in Linear Mode Connectivity of Neural Networks", ICLR 2022, Def. 1)::

      barrier_linear = max_t [f(t) − ((1 − t) f(0) + t f(1))]

  (:func:`modeconn.path.loss_barrier`, which every measured path reports already).

Where the ends are equal, f(0) = f(1), the two barriers are the same number; where they are not, the
definitions part: a path that rises steadily from a low end to a high one has ``barrier_linear = 0`` but
``barrier_mean_ends = ½ |f(1) − f(0)|`` and ``worst = max(f(0), f(1))``; a path with a hump close to its lower
end can have ``barrier_linear > barrier_mean_ends``. Always ``barrier_mean_ends ≥ ½ |f(1) − f(0)| ≥ 0`` and
``barrier_linear ≥ 0`` (both ends are points of the path). Every definition is taken on the grid the path was
measured at (the first and last t are its ends): a hump between grid points is missed by all three alike.

**With and without BatchNorm recalibration.** Every measuring call of modeconn recalibrates BatchNorm at each
point of the path (DESIGN decision 2; :func:`modeconn.path.measure_path`). Without recalibration, a point has
no statistics of its own; what a user who interpolates two checkpoints' state dicts gets is the endpoints'
running statistics interpolated linearly in t along with the weights,

    μ(t) = (1 − t) μ_A + t μ_B,        σ²(t) = (1 − t) σ²_A + t σ²_B,

(every floating-point buffer alike; integer buffers such as ``num_batches_tracked``, unused in eval mode, are
endpoint A's). That is what :func:`measure_path_interpolated_bn` measures, for a segment or a curve alike (a
curve's bends have no statistics, so along a curve too the buffers are the endpoints', linear in t). The card
puts both side by side: ``bn = "recalibrated"`` and ``bn = "interpolated"``.

:func:`barrier_card` gives one path's card (one row per measure and BN treatment, the definitions as columns),
:func:`card_over_pairs` the cards of several endpoint pairs with their mean and standard deviation over pairs.

**Every path between two networks** (:func:`measure_pair`): the straight segment, the aligned segment (θ_B's hidden
units permuted into line with θ_A by weight matching, Ainsworth et al. 2023; :func:`modeconn.align.align_endpoints`)
and the aligned segment with REPAIR at every point (Jordan et al. 2023; :func:`modeconn.repair.measure_path_repaired`),
each with BatchNorm recalibrated and, for a network with BatchNorm, with the endpoints' statistics interpolated
(for the aligned segment, θ_B's permuted with its units). For a network with BatchNorm, Jordan et al.'s "RESET" is
the recalibration: the aligned segment's ``recalibrated`` rows are its RESET, its ``interpolated`` rows the plain
interpolation of the two checkpoints. A network without BatchNorm has one treatment, labelled ``none``.
:func:`measure_pairs` measures them for every pair of several networks (:func:`split_states` their state dicts
into parameters and buffers), :func:`curve_of_pair` adds a fitted curve to its pair's paths, :func:`path_cards`
gives every path's card over the pairs, :func:`card_summary` the same as nested dicts,
:func:`repair_effect` the barrier without and with REPAIR, :func:`card_record` all of it for a report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .align import align_endpoints, apply_permutation, permutation_spec
from .bn import has_bn
from .curves import Curve
from .data import EvalBatches
from .errors import ModeconnError
from .path import PathResult, Points, loss_barrier, measure_path, parameters_along
from .points import MEASURES, forward_at, score
from .repair import measure_path_repaired
from .runtime import CPU, Runtime

STABLE_BELOW = 0.02  # Frankle et al. 2020: stable when the error barrier height is below 2%

# The card's columns of definitions, each with its source and formula (a legend for a report).
DEFINITIONS = {
    "worst": "Garipov et al. 2018: max_t f(t)",
    "barrier_mean_ends": "Frankle et al. 2020 (error), Ainsworth et al. 2023 (loss): max_t f(t) − ½(f(0) + f(1))",
    "barrier_linear": "Entezari et al. 2022: max_t [f(t) − ((1 − t) f(0) + t f(1))]",
}
CARD_COLUMNS = ("bn", "measure", "start", "end", "worst", "worst_t", "barrier_mean_ends", "barrier_linear", "stable")
VALUE_COLUMNS = ("start", "end", "worst", "worst_t", "barrier_mean_ends", "barrier_linear")
BN_LABELS = ("recalibrated", "interpolated")
NO_BN = "none"  # the one BN treatment of a network without BatchNorm (recalibrated and interpolated coincide)
# The paths between two networks that :func:`measure_pair` measures (and the fitted curve, measured elsewhere).
PATHS = {
    "segment": "the straight segment (1 − t) θ_A + t θ_B",
    "aligned": "the aligned segment (1 − t) θ_A + t π(θ_B), π by weight matching (Ainsworth et al. 2023)",
    "aligned_repair": "the aligned segment with REPAIR at each t (Jordan et al. 2023)",
    "curve": "the fitted curve (Garipov et al. 2018)",
}


def worst(t: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Garipov et al. 2018: the worst value along the path, max_t f(t), and the (first) t where it is."""
    _check(t, values)
    i = max(range(len(values)), key=lambda k: values[k])  # the first of equal maxima
    return float(values[i]), float(t[i])


def barrier_mean_ends(values: Sequence[float]) -> float:
    """Frankle et al. 2020, the error barrier height: max_t f(t) − ½ (f(0) + f(1)), f(0) and f(1) the path's ends
    (the first and last values)."""
    if len(values) < 2:
        raise ValueError("a barrier needs the values at two grid points at least (the path's ends)")
    return float(max(values) - 0.5 * (values[0] + values[-1]))


def is_stable(error_barrier: float, threshold: float = STABLE_BELOW) -> bool:
    """Frankle et al. 2020's verdict: a pair is stable (linearly mode connected) when its error barrier height
    (:func:`barrier_mean_ends` of the error, as a fraction) is below 2%."""
    return bool(error_barrier < threshold)


def _check(t: Sequence[float], values: Sequence[float]) -> None:
    if len(t) < 2 or len(t) != len(values):
        raise ValueError("a barrier needs at least two grid points and as many values as points")
    if any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"the grid t must increase strictly from one end of the path to the other, got {list(t)}")
    if any(math.isnan(v) for v in values):
        raise ValueError("a measure along the path is NaN: its barrier is undefined")


def _rows_of(path: pd.DataFrame | PathResult) -> pd.DataFrame:
    return path.rows if isinstance(path, PathResult) else path


def card_rows(rows: pd.DataFrame, measures: Sequence[str], threshold: float = STABLE_BELOW) -> list[dict]:
    """For each of ``measures`` (columns of ``rows``, one row per t in a column ``t``), the three definitions
    and, for an error, Frankle's verdict (None for a loss)."""
    missing = [m for m in ("t", *measures) if m not in rows.columns]
    if missing:
        raise ValueError(f"the rows of a path have no column {', '.join(missing)} (columns: {list(rows.columns)})")
    rows = rows.sort_values("t")
    t = rows["t"].astype(float).tolist()
    out = []
    for m in measures:
        values = rows[m].astype(float).tolist()
        _check(t, values)
        top, top_t = worst(t, values)
        above_ends = barrier_mean_ends(values)
        out.append(
            {
                "measure": m,
                "start": values[0],
                "end": values[-1],
                "worst": top,
                "worst_t": top_t,
                "barrier_mean_ends": above_ends,
                "barrier_linear": float(loss_barrier(t, values)),
                "stable": is_stable(above_ends, threshold) if m.endswith("error") else None,
            }
        )
    return out


def barrier_card(
    rows: pd.DataFrame | PathResult,
    interpolated: pd.DataFrame | PathResult | None = None,
    *,
    measures: Sequence[str] | None = None,
    threshold: float = STABLE_BELOW,
) -> pd.DataFrame:
    """The barrier card of a measured path: for each measure (train loss, train NLL, train error, test NLL, test
    error: the :data:`modeconn.points.MEASURES` present), each definition side by side.

    ``rows``: the path measured with BatchNorm recalibrated at each point (:func:`modeconn.path.measure_path`,
    its :class:`PathResult` or its ``rows``). ``interpolated``: the same path measured with the endpoints'
    BatchNorm statistics interpolated instead (:func:`measure_path_interpolated_bn`), for the "without
    recalibration" rows; leave it out for a network without BatchNorm (both would be the same numbers).

    One row per measure and BN treatment (``bn``: ``"recalibrated"``, then ``"interpolated"`` where given, for
    each measure in turn), columns :data:`CARD_COLUMNS`: the ends' values ``start`` = f(0) and ``end`` = f(1),
    ``worst`` and ``worst_t`` (Garipov et al. 2018), ``barrier_mean_ends`` (Frankle et al. 2020; Ainsworth et
    al. 2023), ``barrier_linear`` (Entezari et al. 2022) and ``stable``: for an error,
    ``barrier_mean_ends < threshold`` (Frankle et al.'s 2%); None for a loss.
    """
    paths = {BN_LABELS[0]: _rows_of(rows)}
    if interpolated is not None:
        paths[BN_LABELS[1]] = _rows_of(interpolated)
    if measures is None:
        measures = [m for m in MEASURES if m in paths[BN_LABELS[0]].columns]
    by_bn = {bn: card_rows(r, measures, threshold) for bn, r in paths.items()}
    card = [{"bn": bn, **by_bn[bn][i]} for i in range(len(measures)) for bn in paths]
    out = pd.DataFrame(card, columns=list(CARD_COLUMNS))
    out["stable"] = out["stable"].astype("boolean")  # <NA> for a loss
    return out


def pair_label(pair: Hashable) -> str:
    """``(0, 1)`` → ``"0-1"``; anything else as its string."""
    return "-".join(str(s) for s in pair) if isinstance(pair, tuple) else str(pair)


def card_over_pairs(cards: Mapping[Hashable, pd.DataFrame], threshold: float = STABLE_BELOW) -> pd.DataFrame:
    """Every endpoint pair's card (:func:`barrier_card`) one after the other, with a first column ``pair``
    (``"0-1"`` for the key ``(0, 1)``), then for each BN treatment and measure their ``mean`` and ``std`` over
    pairs (the sample standard deviation, ddof = 1: NaN for a single pair) in rows with ``pair`` = ``"mean"``
    and ``"std"``. The mean row's ``stable`` is the verdict on the mean error barrier (``< threshold``); the
    std row's is <NA>.

    The pairs of n seeds share their networks (three seeds make three pairs, each seed in two), so their
    spread is not that of independent samples: it says how much the card moves with the choice of pair.
    """
    if not cards:
        raise ValueError("card_over_pairs needs the card of one pair at least")
    each = pd.concat([card.assign(pair=pair_label(p)) for p, card in cards.items()], ignore_index=True)
    each = each[["pair", *CARD_COLUMNS]]
    groups = each.groupby(["bn", "measure"], sort=False)[list(VALUE_COLUMNS)]
    stats = []
    for name, frame in (("mean", groups.mean()), ("std", groups.std(ddof=1))):
        frame = frame.reset_index()
        frame.insert(0, "pair", name)
        if name == "mean":
            frame["stable"] = [
                is_stable(b, threshold) if m.endswith("error") else None
                for m, b in zip(frame["measure"], frame["barrier_mean_ends"])
            ]
        else:
            frame["stable"] = None
        stats.append(frame)
    out = pd.concat([each, *stats], ignore_index=True)[["pair", *CARD_COLUMNS]]
    out["stable"] = out["stable"].astype("boolean")
    return out


def interpolated_buffers(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor]
) -> Callable[[float], dict[str, torch.Tensor]]:
    """``t ↦`` the endpoints' buffers interpolated linearly, (1 − t)·b_A + t·b_B for every floating-point buffer
    (BatchNorm's running mean and variance), endpoint A's for an integer one (``num_batches_tracked``)."""
    if set(start) != set(end):
        raise ModeconnError(
            f"the endpoints' buffers differ in name: {sorted(set(start) ^ set(end))[:3]} (two architectures?)"
        )

    def at(t: float) -> dict[str, torch.Tensor]:
        return {k: torch.lerp(a, end[k].to(a), t) if a.is_floating_point() else a.clone() for k, a in start.items()}

    return at


def buffers_of(template: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The buffers of ``template`` in a state dict (a checkpoint's running statistics), detached."""
    names = [name for name, b in template.named_buffers() if b is not None]
    missing = [k for k in names if k not in state]
    if missing:
        raise ModeconnError(f"the state dict holds no buffer {', '.join(missing[:3])} of the network")
    return {k: state[k].detach() for k in names}


@torch.no_grad()
def measure_path_interpolated_bn(
    template: nn.Module,
    points: Points,
    ts: Sequence[float],
    batches: EvalBatches,
    buffers: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]] | Callable[[float], dict],
    runtime: Runtime = CPU,
    *,
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The path ``points`` (a Curve, or ``t ↦ parameters`` of ``template``) measured at each t of ``ts`` WITHOUT
    BatchNorm recalibration: its BatchNorm layers use the endpoints' running statistics interpolated along t.

    ``buffers``: the endpoints' buffers ``(buffers_A, buffers_B)`` (:func:`buffers_of` a checkpoint's state dict),
    interpolated by :func:`interpolated_buffers`, or any ``t ↦ buffers``. ``points(t)`` must give parameters only
    (:func:`modeconn.points.check_parameters`): the buffers come from ``buffers`` alone. The template's own
    buffers are left as they are. One row per t: ``t`` and :data:`modeconn.points.MEASURES` (``wd`` weighs the
    train loss's regulariser 0.5·wd·‖w‖², as in :func:`modeconn.path.measure_path`), ready for
    :func:`barrier_card`'s ``interpolated``.
    """
    buffers_at = interpolated_buffers(*buffers) if isinstance(buffers, tuple) else buffers
    template_buffers = {name: b for name, b in template.named_buffers() if b is not None}
    was_training = template.training
    template.eval()
    rows = []
    try:
        for t, weights in parameters_along(template, points, ts):
            stats = buffers_at(t)
            missing = [k for k in template_buffers if k not in stats]
            if missing:
                raise ModeconnError(f"no buffer {', '.join(missing[:3])} of the network at t = {t}")
            stats = {k: v.to(template_buffers[k].device) for k, v in stats.items() if k in template_buffers}
            forward = forward_at(template, {**weights, **stats})
            r = score(forward, weights, batches, runtime, val=False)
            rows.append({"t": t, **r.row(wd)})
            if progress is not None:
                progress(f"t={t:.2f} test err {r.test_error:.4f} (BN interpolated)")
    finally:
        template.train(was_training)
    return pd.DataFrame(rows)


def measure_pair(
    make_template: Callable[[], nn.Module],
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    ts: Sequence[float],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    buffers: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    example: torch.Tensor | None = None,
    seed: int = 0,
    repair: bool = True,
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, pd.DataFrame]], dict[str, float]]:
    """The paths between the networks ``start`` = θ_A and ``end`` = θ_B (parameter dicts of ``make_template()``)
    measured at each t of ``ts`` for their barrier cards (module docstring): ``segment``, and with ``example``
    inputs to trace the network on (CPU), ``aligned`` (weight matching from ``seed``) and, with ``repair``,
    ``aligned_repair``.

    Returns (path → BN treatment → rows: ``t`` and :data:`modeconn.points.MEASURES`, the alignment's numbers
    from :func:`modeconn.align.align_endpoints`, empty without ``example``). The treatments: ``recalibrated`` and,
    with the endpoints' ``buffers`` (:func:`buffers_of` their checkpoints), ``interpolated``, for a network with
    BatchNorm (REPAIR's path: ``recalibrated`` only, as its statistics are set with BatchNorm recalibrated);
    :data:`NO_BN` for one without. Each curve is put on the runtime's device; ``wd`` weighs the train loss's
    L2 term; ``progress(message)`` after each point, led by the path's name.
    """
    template = make_template()
    bn = has_bn(template)
    if bn and buffers is None:
        raise ModeconnError("measure_pair: the network has BatchNorm; pass the endpoints' buffers (buffers_of)")
    eval_only = batches._replace(val=None)  # the card's measures are train and test

    def say(name: str):
        return None if progress is None else (lambda message: progress(f"{name} {message}"))

    def segment_to(b: Mapping[str, torch.Tensor]) -> Curve:
        return runtime.prepare(Curve(make_template(), dict(start), dict(b), "bezier", 2))

    def measured(name: str, path: Curve, ends: tuple | None) -> dict[str, pd.DataFrame]:
        rows = measure_path(path.template, path, ts, eval_only, runtime, wd=wd, progress=say(name)).rows
        out = {BN_LABELS[0] if bn else NO_BN: rows[["t", *MEASURES]]}
        if bn:
            out[BN_LABELS[1]] = measure_path_interpolated_bn(
                path.template, path, ts, eval_only, ends, runtime, wd=wd, progress=say(f"{name} (BN interpolated)")
            )
        return out

    paths = {"segment": measured("segment", segment_to(end), buffers)}
    alignment: dict[str, float] = {}
    if example is not None:
        end_aligned, perms, alignment = align_endpoints(template, dict(start), dict(end), example, seed=seed)
        aligned = segment_to(end_aligned)
        ends = (
            (buffers[0], apply_permutation(permutation_spec(template, example), dict(buffers[1]), perms))
            if bn
            else None
        )
        paths["aligned"] = measured("aligned", aligned, ends)
        if repair:
            r = measure_path_repaired(aligned.template, aligned, ts, eval_only, runtime, wd=wd, progress=say("REPAIR"))
            paths["aligned_repair"] = {BN_LABELS[0] if bn else NO_BN: r.rows[["t", *MEASURES]]}
    return paths, alignment


def curve_rows(
    curve: Curve,
    rows: pd.DataFrame,
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    buffers: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    wd: float = 0.0,
) -> dict[str, pd.DataFrame]:
    """A fitted curve's rows for its card, BN treatment → rows, from ``rows`` measured already with BatchNorm
    recalibrated (``t`` and the measures; e.g. eval_curve's): a network without BatchNorm has those alone
    (:data:`NO_BN`); one with BatchNorm adds the curve measured at the same t with the endpoints' ``buffers``
    interpolated (:func:`measure_path_interpolated_bn`)."""
    rows = rows.sort_values("t").reset_index(drop=True)[["t", *MEASURES]]
    if not has_bn(curve.template):
        return {NO_BN: rows}
    if buffers is None:
        raise ModeconnError("curve_rows: the network has BatchNorm; pass the endpoints' buffers (buffers_of)")
    ts = rows["t"].tolist()
    interpolated = measure_path_interpolated_bn(curve.template, curve, ts, batches, buffers, runtime, wd=wd)
    return {BN_LABELS[0]: rows, BN_LABELS[1]: interpolated}


def split_states(
    template: nn.Module, states: Mapping[Hashable, Mapping[str, torch.Tensor]]
) -> tuple[dict[Hashable, dict[str, torch.Tensor]], dict[Hashable, dict[str, torch.Tensor]]]:
    """Networks' state dicts (name → state dict of ``template``'s architecture) split for :func:`measure_pairs`:
    (name → parameters, name → buffers), the buffers (:func:`buffers_of`) only for a network with BatchNorm
    (else an empty dict). The tensors are the state dicts' own, not copies."""
    names = [n for n, _ in template.named_parameters()]
    weights = {k: {n: state[n] for n in names} for k, state in states.items()}  # parameters only
    buffers = {k: buffers_of(template, state) for k, state in states.items()} if has_bn(template) else {}
    return weights, buffers


def pairs_of(names: Sequence[Hashable]) -> list[tuple[Hashable, Hashable]]:
    """Every pair of ``names``, each once, in order: ``[0, 1, 2]`` → ``[(0, 1), (0, 2), (1, 2)]``."""
    return list(itertools.combinations(names, 2))


def pairs_points(networks: int, points: int, *, bn: bool, align: bool = True, repair: bool = True) -> int:
    """How many points of t :func:`measure_pairs` measures (its ``progress`` calls) for ``networks`` networks,
    ``points`` values of t per path: per pair the segment, the aligned segment with ``align`` (each twice for a
    network with BatchNorm ``bn``: recalibrated and interpolated) and the aligned segment with REPAIR."""
    return math.comb(networks, 2) * points * ((1 + bn) * (1 + align) + repair)


def measure_pairs(
    make_template: Callable[[], nn.Module],
    weights: Mapping[Hashable, Mapping[str, torch.Tensor]],
    ts: Sequence[float],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    buffers: Mapping[Hashable, Mapping[str, torch.Tensor]] | None = None,
    example: torch.Tensor | None = None,
    seed: int = 0,
    repair: bool = True,
    wd: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[tuple, dict[str, dict[str, pd.DataFrame]]], dict[str, dict[str, float]]]:
    """:func:`measure_pair` for every pair of the networks ``weights`` (name → parameters of ``make_template()``;
    the pairs of :func:`pairs_of` their names, in order), with their ``buffers`` (name → :func:`buffers_of`) for a
    network with BatchNorm (empty or None without).

    Returns (pair → path → BN treatment → rows, ready for :func:`path_cards` and :func:`along_t_rows`;
    :func:`pair_label` of a pair → its alignment's numbers). ``example``, ``seed``, ``repair``, ``wd`` and
    ``progress`` as in :func:`measure_pair`, for every pair alike."""
    measured, alignment = {}, {}
    for a, b in pairs_of(list(weights)):
        ends = (buffers[a], buffers[b]) if buffers else None
        measured[(a, b)], alignment[pair_label((a, b))] = measure_pair(
            make_template, weights[a], weights[b], ts, batches, runtime,
            buffers=ends, example=example, seed=seed, repair=repair, wd=wd, progress=progress,
        )  # fmt: skip
    return measured, alignment


def curve_of_pair(
    measured: Mapping[Hashable, Mapping[str, Mapping[str, pd.DataFrame]]],
    pair: Hashable,
    curve: Curve,
    rows: pd.DataFrame,
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    buffers: Mapping[Hashable, Mapping[str, torch.Tensor]] | None = None,
    wd: float = 0.0,
) -> dict[tuple, dict[str, dict[str, pd.DataFrame]]] | None:
    """``measured`` (:func:`measure_pairs`) with the fitted ``curve`` of ``pair`` added as that pair's path
    ``curve`` (:func:`curve_rows` of eval_curve's ``rows`` of the path ``curve``, the curve put on the runtime's
    device, measured on train and test), or None where ``pair`` is not one of ``measured``'s pairs. ``buffers``:
    name → the networks' buffers, for a network with BatchNorm (empty or None without)."""
    if pair not in measured:
        return None
    ends = (buffers[pair[0]], buffers[pair[1]]) if buffers else None
    on_path = rows[rows["path"] == "curve"]
    added = curve_rows(runtime.prepare(curve), on_path, batches._replace(val=None), runtime, buffers=ends, wd=wd)
    return {k: {**paths, "curve": added} if k == pair else paths for k, paths in measured.items()}


def _card_of(by_bn: Mapping[str, pd.DataFrame | PathResult], threshold: float) -> pd.DataFrame:
    if NO_BN in by_bn:
        return barrier_card(by_bn[NO_BN], threshold=threshold).assign(bn=NO_BN)
    return barrier_card(by_bn[BN_LABELS[0]], by_bn.get(BN_LABELS[1]), threshold=threshold)


def path_cards(
    measured: Mapping[Hashable, Mapping[str, Mapping[str, pd.DataFrame | PathResult]]],
    threshold: float = STABLE_BELOW,
) -> pd.DataFrame:
    """The cards of every path over the endpoint pairs: ``measured`` maps a pair (``(0, 1)``) to its paths (path →
    BN treatment → rows, as :func:`measure_pair` returns them; a path may be missing in some pairs, e.g. the
    fitted curve of one pair only). For each path in turn, :func:`card_over_pairs` of the pairs that have it,
    with a first column ``path``."""
    names = list(dict.fromkeys(p for paths in measured.values() for p in paths))
    frames = []
    for name in names:
        cards = {pair: _card_of(paths[name], threshold) for pair, paths in measured.items() if name in paths}
        frames.append(card_over_pairs(cards, threshold).assign(path=name))
    out = pd.concat(frames, ignore_index=True)
    return out[["path", *[c for c in out.columns if c != "path"]]]


def _plain(value):
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def card_summary(cards: pd.DataFrame) -> dict:
    """:func:`path_cards`' table as nested dicts: ``{"mean" | "std" | <pair>: {path: {bn: {measure: {column:
    value}}}}}`` (NaN and <NA> as None), the columns those of :data:`CARD_COLUMNS` after ``bn`` and ``measure``."""
    out: dict = {}
    for row in cards.to_dict("records"):
        node = out.setdefault(row["pair"], {}).setdefault(row["path"], {}).setdefault(row["bn"], {})
        node[row["measure"]] = {c: _plain(row[c]) for c in CARD_COLUMNS[2:]}
    return out


def card_record(cards: pd.DataFrame, threshold: float = STABLE_BELOW, alignment: Mapping | None = None) -> dict:
    """:func:`path_cards`' table as one record of numbers (what a metrics file holds: no text, no list, no null;
    a value the card lacks, e.g. the std over one pair or the verdict of a loss, is left out): ``card``
    (:func:`card_summary`; its keys other than ``mean`` and ``std`` are the pairs), ``bn`` (whether the network
    has BatchNorm), ``threshold``, ``alignment`` (per pair, as given) and, where the card has the aligned segment
    with REPAIR, ``repair``: :func:`repair_effect` on the test error and the train loss. The definitions' text is
    :data:`DEFINITIONS`; the paths' descriptions, :data:`PATHS`."""
    summary = card_summary(cards)
    record = {
        "card": summary,
        "bn": NO_BN not in set(cards["bn"]),
        "threshold": threshold,
        "alignment": dict(alignment or {}),
    }
    if "aligned_repair" in set(cards["path"]):
        record["repair"] = {m: repair_effect(summary, m) for m in ("test_error", "train_loss")}
    return _without_none(record)


def _without_none(tree):
    """``tree`` with every None leaf (and every dict left empty by that) left out."""
    if not isinstance(tree, Mapping):
        return tree
    out = {k: _without_none(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def card_pairs(record: Mapping) -> list[str]:
    """The pairs of a :func:`card_record`, in its order."""
    return [p for p in record["card"] if p not in ("mean", "std")]


def repair_effect(
    summary: Mapping, measure: str = "test_error", definition: str = "barrier_mean_ends", over: str = "mean"
) -> dict[str, float | None]:
    """The aligned segment's barrier (``definition`` of ``measure``, the ``over`` row of :func:`card_summary`)
    without and with REPAIR: ``none`` (no correction: the endpoints' BatchNorm statistics interpolated where the
    network has BatchNorm, else the aligned segment as it is), ``reset`` (BatchNorm recalibrated; None without
    BatchNorm), ``repair``, and ``reduction`` = 1 − repair / none (Jordan et al. report 60–100%)."""
    paths = summary[over]
    if "aligned" not in paths or "aligned_repair" not in paths:
        raise ModeconnError("repair_effect: the card has no aligned segment with and without REPAIR")
    aligned, repaired = paths["aligned"], paths["aligned_repair"]
    bn = NO_BN not in aligned
    none = aligned[BN_LABELS[1] if bn and BN_LABELS[1] in aligned else (BN_LABELS[0] if bn else NO_BN)]
    value = none[measure][definition]
    repair = repaired[BN_LABELS[0] if bn else NO_BN][measure][definition]
    reset = aligned[BN_LABELS[0]][measure][definition] if bn else None
    reduction = 1 - repair / value if value else None
    return {"none": value, "reset": reset, "repair": repair, "reduction": reduction}


def along_t_rows(measured: Mapping[Hashable, Mapping[str, Mapping[str, pd.DataFrame | PathResult]]]) -> pd.DataFrame:
    """Every measured row in one long table: ``pair``, ``path``, ``bn``, then ``t`` and the measures."""
    frames = [
        _rows_of(rows).assign(pair=pair_label(pair), path=path, bn=bn)
        for pair, paths in measured.items()
        for path, by_bn in paths.items()
        for bn, rows in by_bn.items()
    ]
    out = pd.concat(frames, ignore_index=True)
    return out[["pair", "path", "bn", "t", *[m for m in MEASURES if m in out.columns]]]


def along_t_mean(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`along_t_rows` averaged over pairs, one row per t that every path was measured at (t rounded to 1e-6,
    so that grids of the same points join: the curve's 21 points hold the others' 11), a column
    ``<path>_<bn>_<measure>`` per path, treatment and measure: the table a plot of the paths along t reads."""
    rows = rows.assign(t=rows["t"].round(6))
    measures = [m for m in MEASURES if m in rows.columns]
    wide = rows.pivot_table(index="t", columns=["path", "bn"], values=measures, aggfunc="mean", sort=False)
    wide.columns = [f"{path}_{bn}_{m}" for m, path, bn in wide.columns]
    return wide.dropna().sort_index().reset_index()
