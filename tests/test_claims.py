"""The paper's claims against a run's numbers (modeconn.claims): each outcome on both sides of its threshold."""

from __future__ import annotations

import pytest

from modeconn import claims


def test_better_is_three_way_with_noise_and_two_way_without():
    assert claims.better(0.01, 0.004) == claims.SHOWN
    assert claims.better(0.003, 0.004) == claims.WITHIN_NOISE
    assert claims.better(-0.003, 0.004) == claims.WITHIN_NOISE
    assert claims.better(-0.01, 0.004) == claims.NOT_SHOWN
    assert claims.better(0.0001, None) == claims.SHOWN
    assert claims.better(-0.0001, None) == claims.NOT_SHOWN


@pytest.mark.parametrize(("worst", "shown"), [(0.105, True), (0.12, True), (0.1205, False), (0.9, False)])
def test_a_curve_connects_when_its_error_barrier_is_at_most_two_points(worst, shown):
    v = claims.curve_connects([0.09, worst, 0.095], endpoint_errors=(0.1, 0.095))
    assert v.shown is shown and v.outcome == (claims.SHOWN if shown else claims.NOT_SHOWN)
    assert f"{100 * worst:.2f}%" in v.evidence and "barrier" in v.evidence


def test_the_segment_claim_is_the_mirror_of_the_curve_claim():
    assert claims.segment_does_not([0.9], (0.1, 0.1)).shown
    assert not claims.segment_does_not([0.11], (0.1, 0.1)).shown


def test_ensembles_temperature_length_and_distances():
    assert claims.curve_ensemble_beats_endpoints(0.09, 0.1, noise=0.004).outcome == claims.SHOWN
    assert claims.curve_ensemble_beats_endpoints(0.0998, 0.1, noise=0.004).outcome == claims.WITHIN_NOISE
    assert claims.curve_ensemble_beats_endpoints(0.11, 0.1, noise=None).outcome == claims.NOT_SHOWN
    assert claims.temperature_helps(0.25, 0.24).shown and not claims.temperature_helps(0.25, 0.26).shown
    assert claims.curve_longer(1.19).shown and not claims.curve_longer(0.99).shown
    assert claims.fge_snapshots_closer(0.9, 3.7).shown and not claims.fge_snapshots_closer(4.0, 3.7).shown


def test_fig4_needs_the_curve_below_both_the_segment_and_the_random_direction():
    assert claims.curve_points_differ([0.1, 0.09], [0.103, 0.103], [0.104, 0.11]).shown
    assert not claims.curve_points_differ([0.1, 0.09], [0.09, 0.09], [0.104, 0.11]).shown  # segment ties
    # 0.8 points better than the segment, but the seed spread is 1 point: the run cannot tell
    v = claims.curve_points_differ([0.1, 0.09], [0.103, 0.103], [0.104, 0.11], noise=0.01)
    assert v.outcome == claims.WITHIN_NOISE and "seed spread 1.00 points" in v.evidence


def test_errors_on_another_scale_or_none_at_all_are_a_clear_error_not_a_verdict():
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        claims.curve_connects([10, 12, 11], endpoint_errors=(10, 10.1))  # percent, not fractions
    with pytest.raises(ValueError, match="no values"):
        claims.curve_connects([], endpoint_errors=(0.1, 0.1))
    with pytest.raises(ValueError, match="fractions"):
        claims.fge_beats(9.86, 9.69, "Ind", "1B")


def test_a_claim_the_run_cannot_test_says_why():
    v = claims.not_tested("Sec. 5, Table 1: FGE beats Ind at 1B", "each FGE run took 1 snapshot(s)")
    assert v.outcome == claims.NOT_TESTED and not v.shown and "1 snapshot" in v.evidence


def test_fge_beats_names_the_rival_and_the_budget():
    v = claims.fge_beats(0.1054, 0.1036, "Ind", "1B", noise=0.0042)
    assert v.outcome == claims.WITHIN_NOISE and "Ind at 1B" in v.claim and "10.54%" in v.evidence
    v = claims.fge_beats(0.1054, 0.1036, "SSE", "1B", how="FGE: mean over 3 runs")
    assert (
        v.outcome == claims.NOT_SHOWN and "(FGE: mean over 3 runs)" in v.evidence and "the sign decides" in v.evidence
    )
