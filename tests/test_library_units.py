"""Small library pieces that the stages call, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeconn.path_ensembles import random_direction
from modeconn.points import PointResult
from modeconn.runtime import derived_seed
from modeconn.snapshots import Snapshot, runs_summary, snapshot_rows


def test_random_direction_is_a_seeded_unit_vector_of_no_preferred_axis():
    d = random_direction(10_000, seed=3)
    assert d.shape == (10_000,) and d.dtype == torch.float64
    assert d.norm().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(d, random_direction(10_000, seed=3)), "same seed, same direction"
    assert not torch.equal(d, random_direction(10_000, seed=4))
    # On the sphere in 10,000 dimensions each coordinate is ≈ N(0, 1/n): mean 0, variance 1/n.
    assert abs(d.mean().item()) < 4 / 10_000**0.5 / 100**0.5
    assert (d.square().mean().item() * 10_000) == pytest.approx(1.0)
    # It does not touch the global random state (the stages seed it for training).
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    random_direction(100, seed=1)
    assert torch.equal(torch.rand(1), before)


def test_point_row_adds_the_regulariser_to_the_train_nll():
    r = PointResult(
        train_nll=0.5,
        train_error=0.1,
        test_nll=0.7,
        test_error=0.2,
        test_logprobs=torch.zeros(1, 2),
        val_logprobs=None,
        l2=40.0,
    )
    row = r.row(wd=5e-4)
    assert row["train_loss"] == pytest.approx(0.5 + 0.5 * 5e-4 * 40.0)
    assert (row["train_nll"], row["train_error"], row["test_nll"], row["test_error"]) == (0.5, 0.1, 0.7, 0.2)
    assert r.row(0.0)["train_loss"] == 0.5


def test_derived_seeds_are_distinct_across_runs_and_base_seeds():
    seeds = {derived_seed(s, r) for s in range(5) for r in range(5)}
    assert len(seeds) == 25 and derived_seed(0, 0) == 0 and derived_seed(2, 7) == 2007


def _lp(probs):
    return torch.tensor(probs).log()


def test_snapshot_rows_against_a_hand_computed_running_ensemble():
    y, y_val = torch.tensor([0, 1]), torch.tensor([1])
    a = _lp([[0.6, 0.4], [0.7, 0.3]])  # right, wrong
    b = _lp([[0.2, 0.8], [0.1, 0.9]])  # wrong, right
    snaps = [
        Snapshot(iteration=10, epoch=0.5, logprobs=a, distance=math.nan, val_logprobs=_lp([[0.3, 0.7]])),
        Snapshot(iteration=20, epoch=1.0, logprobs=b, distance=2.5, val_logprobs=_lp([[0.9, 0.1]])),
    ]
    rows = snapshot_rows(run=1, seed=7, snapshots=snaps, labels=y, offset=4.0, val_labels=y_val)
    assert [(r["run"], r["seed"], r["snapshot"], r["cost"]) for r in rows] == [(1, 7, 1, 4.5), (1, 7, 2, 5.0)]
    assert rows[0]["accuracy"] == 0.5 and rows[0]["nll"] == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2)
    # The ensemble of both: mean probabilities [[0.4, 0.6], [0.4, 0.6]] → class 1 twice: one right.
    assert rows[1]["ensemble_accuracy"] == 0.5
    assert rows[1]["ensemble_nll"] == pytest.approx(-(math.log(0.4) + math.log(0.6)) / 2)
    assert rows[0]["ensemble_nll"] == pytest.approx(rows[0]["nll"])  # an ensemble of one is the snapshot
    # Validation: [0.3, 0.7] then the mean [0.6, 0.4] on label 1.
    assert rows[0]["val_accuracy"] == 1.0 and rows[1]["val_accuracy"] == 0.0
    assert rows[1]["ensemble_val_nll"] == pytest.approx(-math.log(0.4))
    assert rows[1]["ensemble_val_accuracy"] == 0.0
    assert math.isnan(rows[0]["distance"]) and rows[1]["distance"] == 2.5
    summary = runs_summary(rows)
    assert summary["runs"] == 1 and summary["snapshots_per_run"] == [2]
    assert summary["ensemble_accuracy"] == 0.5 and summary["mean_distance"] == 2.5
    assert summary["ensemble_val_nll"] == pytest.approx(-math.log(0.4))
    assert summary["snapshot_accuracy"] == pytest.approx(0.5)
    # Without validation labels no val_ columns appear.
    assert "val_accuracy" not in snapshot_rows(0, 0, snaps, y, 0.0)[0]
    assert F.nll_loss(a, y).item() == pytest.approx(rows[0]["nll"])
