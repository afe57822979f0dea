"""Ensemble arithmetic, temperature scaling, budgets and path summaries against hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeconn import ensemble
from modeconn.budget import Member, at_budget, over_cost
from modeconn.path import path_summary


def lp(rows):
    return torch.tensor(rows, dtype=torch.float32).log()


def test_probability_average_by_hand():
    a = lp([[0.9, 0.1], [0.4, 0.6]])
    b = lp([[0.3, 0.7], [0.2, 0.8]])
    y = torch.tensor([0, 1])
    ens = ensemble.combine([a, b])
    assert torch.allclose(ens.exp(), torch.tensor([[0.6, 0.4], [0.3, 0.7]]), atol=1e-6)
    assert ensemble.accuracy(ens, y) == 1.0
    assert ensemble.nll(ens, y) == pytest.approx(-(math.log(0.6) + math.log(0.7)) / 2, rel=1e-6)
    # Members alone: a gets both right, b gets the first wrong.
    assert ensemble.accuracy(b, y) == 0.5


def test_logit_average_is_a_different_named_option():
    a = lp([[0.9, 0.1]])
    b = lp([[0.3, 0.7]])
    geo = ensemble.combine([a, b], "logits").exp()
    g = torch.tensor([math.sqrt(0.9 * 0.3), math.sqrt(0.1 * 0.7)])
    assert torch.allclose(geo[0], g / g.sum(), atol=1e-6)
    with pytest.raises(Exception, match="unknown ensemble method"):
        ensemble.combine([a], "median")


def test_running_ensemble():
    y = torch.tensor([0, 1])
    members = [lp([[0.9, 0.1], [0.6, 0.4]]), lp([[0.8, 0.2], [0.1, 0.9]])]
    rows = ensemble.running(members, y)
    assert [r["accuracy"] for r in rows] == [0.5, 1.0]


def test_temperature_recovers_a_known_temperature():
    torch.manual_seed(0)
    n, k, true_t = 20000, 5, 2.5
    logits = torch.randn(n, k) * 3
    y = torch.distributions.Categorical(logits=logits / true_t).sample()
    t = ensemble.fit_temperature(F.log_softmax(logits, 1), y)
    assert t == pytest.approx(true_t, rel=0.08)
    # The fitted T beats T = 1 and its neighbours in NLL.
    lp_ = F.log_softmax(logits, 1)
    best = ensemble.nll(ensemble.scale(lp_, t), y)
    for other in (1.0, t * 0.8, t * 1.25):
        assert best <= ensemble.nll(ensemble.scale(lp_, other), y) + 1e-6


def test_budget_accounting_never_exceeds_budget():
    y = torch.tensor([0])
    good, bad = lp([[0.9, 0.1]]), lp([[0.1, 0.9]])
    members = [Member("fge", 4.5, good), Member("fge", 5.0, good), Member("fge", 5.5, bad)]
    r = at_budget(members, 5.0, y)
    assert r["members"] == 2 and r["accuracy"] == 1.0
    assert at_budget(members, 4.0, y) is None
    rows = over_cost(members, y)
    assert [r["members"] for r in rows] == [1, 2, 3]
    assert [r["epochs"] for r in rows] == [4.5, 5.0, 5.5]


def test_budget_on_the_validation_split_uses_the_validation_predictions():
    y_test, y_val = torch.tensor([0]), torch.tensor([1])
    a, b = lp([[0.9, 0.1]]), lp([[0.2, 0.8]])
    # The first member predicts class 0 on test (right) and class 1 on val (right); split="val" must read
    # its validation predictions, not its test ones (which would give error 1 and NLL -log 0.1).
    members = [Member("ind", 1.0, a, b), Member("ind", 2.0, b, b)]
    test, val = at_budget(members, 1.0, y_test), at_budget(members, 1.0, y_val, split="val")
    assert test["test_error"] == 0.0 and "val_error" not in test
    assert val["val_error"] == 0.0 and val["nll"] == pytest.approx(-math.log(0.8))
    assert at_budget(members, 2.0, y_test)["nll"] == pytest.approx(-math.log((0.9 + 0.2) / 2))


def test_path_summary_closed_form():
    t = [0.0, 0.5, 1.0]
    values = [1.0, 3.0, 1.0]
    arc = [0.0, 1.0, 3.0]  # unequal steps in arc length
    s = path_summary(t, values, arc)
    assert s["start"] == 1.0 and s["end"] == 1.0 and s["max"] == 3.0 and s["min"] == 1.0
    assert s["mean_t"] == pytest.approx((0.5 * (1 + 3) * 0.5 + 0.5 * (3 + 1) * 0.5) / 1.0)
    assert s["int_arc"] == pytest.approx(0.5 * (1 + 3) * 1 + 0.5 * (3 + 1) * 2)
    assert s["mean_arc"] == pytest.approx(6.0 / 3.0)
