"""The paper's claims, checked against one run's own numbers.

Garipov et al. (2018) make a handful of claims that a run of this pipeline can test at any size. Each
function here takes the numbers a run measured and returns a :class:`Verdict`: the claim as the paper states
it, this run's evidence in one line, and an outcome —

- ``shown``: the run shows it, by more than the noise where a noise level is known;
- ``within noise``: the difference the claim is about is smaller than the spread over seeds (the run can
  tell neither way);
- ``not shown``: the run shows the opposite, or (for a threshold claim) misses the threshold;
- ``not tested``: the run cannot test it (:func:`not_tested`, e.g. FGE runs of one snapshot each).

Errors are fractions in [0, 1] (0.1 = 10%); anything else is a ValueError, not a verdict on a wrong scale.

The thresholds are conventions, stated in each function: a path "connects" two networks when its error
barrier, max_t err(t) − max(err(0), err(1)), is at most 2 points — the tolerance Frankle et al. (ICML 2020)
use to call two networks linearly connected. A report prints the verdicts of its own run, so a fresh clone
on another machine states what *its* numbers show, not what one machine's run once showed.

    v = claims.curve_connects(curve_errors, endpoint_errors=(e0, e1))
    print(v.outcome, v.evidence)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SHOWN, WITHIN_NOISE, NOT_SHOWN, NOT_TESTED = "shown", "within noise", "not shown", "not tested"
TOLERANCE = 0.02  # error barrier (fraction) under which a path connects two networks (Frankle et al. 2020)


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper against one run: ``outcome`` is ``shown``, ``within noise`` or ``not shown``."""

    claim: str  # the paper's statement, with its section
    evidence: str  # this run's numbers, one line
    outcome: str

    @property
    def shown(self) -> bool:
        return self.outcome == SHOWN


def _fractions(values: Sequence[float], what: str) -> list[float]:
    """``values`` as a list, checked to be a non-empty sequence of error fractions in [0, 1]."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{what}: no values")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{what} must be error fractions in [0, 1] (0.1 = 10%), got {values[:5]}")
    return values


def _pts(x: float) -> str:
    return f"{100 * x:.2f}%"


def _noise(noise: float | None) -> str:
    """How a comparison's noise level reads in its evidence."""
    if noise is None:
        return " (no seed spread, one seed: the sign decides)"
    return f" (seed spread {100 * noise:.2f} points)"


def better(gain: float, noise: float | None) -> str:
    """The outcome of "A is better than B" where ``gain`` = how much better A is (negative: worse) and ``noise``
    the spread that a difference must exceed (None: unknown, the sign decides)."""
    if noise is not None and abs(gain) <= noise:
        return WITHIN_NOISE
    return SHOWN if gain > 0 else NOT_SHOWN


def barrier(errors: Sequence[float], endpoint_errors: tuple[float, float]) -> float:
    """Error barrier of a path: its worst error along t above the worse endpoint's."""
    return max(errors) - max(endpoint_errors)


def curve_connects(
    curve_errors: Sequence[float], endpoint_errors: tuple[float, float], tolerance: float = TOLERANCE
) -> Verdict:
    """Sec. 3: along the trained curve the test error stays near the endpoints' (barrier ≤ ``tolerance``)."""
    curve_errors, endpoint_errors = _fractions(curve_errors, "curve errors"), _fractions(endpoint_errors, "endpoints")
    b = barrier(curve_errors, endpoint_errors)
    return Verdict(
        "Sec. 3: the curve joins the two networks along a path of nearly constant test error",
        f"worst test error along the curve {_pts(max(curve_errors))}, endpoints {_pts(endpoint_errors[0])} and "
        f"{_pts(endpoint_errors[1])}: barrier {100 * b:+.2f} points (connected if ≤ {100 * tolerance:.0f})",
        SHOWN if b <= tolerance else NOT_SHOWN,
    )


def segment_does_not(
    segment_errors: Sequence[float], endpoint_errors: tuple[float, float], tolerance: float = TOLERANCE
) -> Verdict:
    """Sec. 3: the straight segment between the same networks crosses a region of high error."""
    segment_errors = _fractions(segment_errors, "segment errors")
    b = barrier(segment_errors, _fractions(endpoint_errors, "endpoints"))
    return Verdict(
        "Sec. 3: the straight segment between the same networks crosses high error",
        f"worst test error along the segment {_pts(max(segment_errors))}: barrier {100 * b:+.2f} points",
        SHOWN if b > tolerance else NOT_SHOWN,
    )


def curve_longer(length_ratio: float) -> Verdict:
    """Sec. 3 (Table 4 of the paper: 1.30–2.13× for Bezier curves): the curve is longer than the segment."""
    return Verdict(
        "Sec. 3: the curve is longer than the segment (paper: 1.30–2.13× for Bezier curves)",
        f"length ratio {length_ratio:.2f}",
        SHOWN if length_ratio > 1 else NOT_SHOWN,
    )


def curve_ensemble_beats_endpoints(curve_error: float, endpoints_error: float, noise: float | None) -> Verdict:
    """Sec. 4: an ensemble of points along the curve beats the ensemble of its two endpoints."""
    curve_error, endpoints_error = _fractions([curve_error, endpoints_error], "ensemble errors")
    return Verdict(
        "Sec. 4: an ensemble of the curve's points beats the two endpoints' ensemble",
        f"test error {_pts(curve_error)} against {_pts(endpoints_error)}{_noise(noise)}",
        better(endpoints_error - curve_error, noise),
    )


def temperature_helps(nll: float, nll_scaled: float) -> Verdict:
    """Sec. 4: temperature scaling (fitted on validation) lowers the curve ensemble's test NLL."""
    return Verdict(
        "Sec. 4: temperature scaling improves the curve ensemble (test NLL)",
        f"test NLL {nll_scaled:.4f} scaled against {nll:.4f} unscaled",
        SHOWN if nll_scaled < nll else NOT_SHOWN,
    )


def curve_points_differ(
    curve_errors: Sequence[float],
    segment_errors: Sequence[float],
    random_errors: Sequence[float],
    noise: float | None = None,
) -> Verdict:
    """Fig. 4: ŵ1 ensembled with a point of the curve beats it ensembled with a point of the segment or of a
    random direction at the same distance (mean test error over the t measured; the gain is over the better
    of the two, against ``noise``)."""
    c, s, r = (
        sum(e) / len(e)
        for e in (
            _fractions(v, w)
            for v, w in ((curve_errors, "curve"), (segment_errors, "segment"), (random_errors, "random"))
        )
    )
    return Verdict(
        "Fig. 4: ŵ1 ensembled with a curve point beats a segment point and a random point at the same distance",
        f"mean test error over t: curve {_pts(c)}, segment {_pts(s)}, random direction {_pts(r)}{_noise(noise)}",
        better(min(s, r) - c, noise),
    )


def fge_beats(
    fge_error: float, other_error: float, other: str, budget: str, noise: float | None = None, how: str = ""
) -> Verdict:
    """Sec. 5, Table 1: FGE's ensemble has a lower test error than ``other``'s at the same budget (``how``: what
    the two errors are, e.g. means over replicates)."""
    fge_error, other_error = _fractions([fge_error, other_error], "FGE and rival errors")
    return Verdict(
        f"Sec. 5, Table 1: FGE beats {other} at {budget}",
        f"test error {_pts(fge_error)} against {_pts(other_error)}{f' ({how})' if how else ''}{_noise(noise)}",
        better(other_error - fge_error, noise),
    )


def fge_snapshots_closer(fge_distance: float, sse_distance: float) -> Verdict:
    """Sec. 5: consecutive FGE snapshots lie much closer in weight space than Snapshot Ensembles' (paper: ≈7
    against ≈40), yet ensemble well."""
    return Verdict(
        "Sec. 5: consecutive FGE snapshots lie closer together than SSE's",
        f"mean distance {fge_distance:.2f} (FGE) against {sse_distance:.2f} (SSE)",
        SHOWN if fge_distance < sse_distance else NOT_SHOWN,
    )


def not_tested(claim: str, why: str) -> Verdict:
    """A claim this run cannot test, and why (e.g. FGE runs of one snapshot each are no ensemble)."""
    return Verdict(claim, why, NOT_TESTED)
