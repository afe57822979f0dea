"""A path measured along t, the plane, the path ensembles of Fig. 4 and the budget comparison, as library calls on
tiny in-memory data (no workspace): against update_bn, closed forms and hand computations."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from modeconn import budget, ensemble
from modeconn.curves import Curve, segment_of
from modeconn.data import DATASETS, Prepared, eval_batches, make_synthetic
from modeconn.errors import ModeconnError
from modeconn.models import create_model
from modeconn.path import curve_metrics, measure_path, path_summaries
from modeconn.path_ensembles import path_ensembles, random_direction
from modeconn.plane import measure_plane
from modeconn.points import MEASURES, measure
from modeconn.runtime import CPU
from modeconn.train import predict
from modeconn.weights import flat, unflatten


def small_data(val: bool = True) -> Prepared:
    """1×8×8 images of 3 classes: train 60, test 30 (and validation 24)."""
    train, test = make_synthetic(n_train=60, n_test=30, num_classes=3, channels=1, size=8, seed=0)
    info = dataclasses.replace(DATASETS["synthetic"], num_classes=3, channels=1, size=8)
    held = make_synthetic(n_train=24, n_test=1, num_classes=3, channels=1, size=8, seed=1)[0] if val else None
    return Prepared(info, train, test, held)


def bn_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", 3, in_channels=1, input_size=8, width=16, depth=1, batch_norm=True)


def bn_curve() -> Curve:
    """A Bezier curve between two BN nets, its bend moved off the segment, its template's running statistics
    left stale (as training leaves them: far from any point's)."""
    a, b = bn_net(0), bn_net(1)
    curve = Curve(bn_net(2), dict(a.named_parameters()), dict(b.named_parameters()), "bezier", 3)
    with torch.no_grad():
        curve.bends.add_(0.5 * torch.randn(curve.bends.shape, generator=torch.Generator().manual_seed(3)))
        for m in curve.template.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(0.01)
    return curve


def reference_at(curve: Curve, t: float, data: Prepared, batch_size: int) -> dict[str, float]:
    """A plain copy of the network holding φ(t), BN recalibrated by torch's update_bn, measured in eval mode."""
    net = copy.deepcopy(curve.template)
    with torch.no_grad():
        for name, w in curve.weights(t).items():
            net.get_parameter(name).copy_(w)
    batches = eval_batches(data, batch_size)
    update_bn(batches.bn, net)
    net.eval()
    lp, y = predict(net, batches.test, CPU)
    return {"test_nll": ensemble.nll(lp, y), "test_error": ensemble.error(lp, y)}


def test_a_state_dict_is_refused_with_what_to_pass_instead():
    curve, data = bn_curve(), small_data()
    batches = eval_batches(data, 16)
    for state in (curve.state_at(0.5), bn_net(0).state_dict()):
        with pytest.raises(ModeconnError, match=r"buffers.*curve\.weights\(t\).*named_parameters"):
            measure(curve.template, state, batches, CPU)
    with pytest.raises(ModeconnError, match="running_mean"):
        measure_path(curve.template, curve.state_at, [0.0, 1.0], batches, CPU)
    params = dict(curve.weights(0.5))
    del params["layers.1.weight"]
    with pytest.raises(ModeconnError, match="missing layers.1.weight"):
        measure(curve.template, params, batches, CPU)


def test_measure_path_recalibrates_bn_at_each_point_as_update_bn():
    curve, data = bn_curve(), small_data()
    ts = [0.0, 0.3, 1.0]
    r = measure_path(curve.template, curve, ts, eval_batches(data, 16), CPU)
    for i, t in enumerate(ts):
        want = reference_at(curve, t, data, 16)
        got = r.rows.iloc[i]
        assert got["test_nll"] == pytest.approx(want["test_nll"], rel=1e-5), f"t={t}"
        assert got["test_error"] == pytest.approx(want["test_error"], abs=1e-9), f"t={t}"
    # The same point with the template's stale statistics (no recalibration) is far off: the test can fail.
    stale = copy.deepcopy(curve.template).eval()
    with torch.no_grad():
        for name, w in curve.weights(0.3).items():
            stale.get_parameter(name).copy_(w)
    lp, y = predict(stale, eval_batches(data, 16).test, CPU)
    assert abs(ensemble.nll(lp, y) - r.rows.iloc[1]["test_nll"]) > 0.1
    # A callable t -> parameters is the same path.
    again = measure_path(curve.template, lambda t: curve.weights(t), ts, eval_batches(data, 16), CPU)
    assert again.rows.equals(r.rows) and torch.equal(again.logprobs, r.logprobs)


def test_measure_path_rows_summaries_lengths_and_barrier_on_the_segment():
    curve, data = bn_curve(), small_data()
    segment = segment_of(curve, bn_net(4))
    ts = torch.linspace(0, 1, 5).tolist()
    wd = 0.01
    r = measure_path(segment.template, segment, ts, eval_batches(data, 16), CPU, wd=wd)
    assert list(r.rows.columns[:6]) == ["t", *MEASURES] and r.rows["t"].tolist() == ts
    assert {"test_ece", "val_nll", "val_error", "temperature", "test_nll_scaled", "test_ece_scaled"} <= set(r.rows)
    assert r.logprobs.shape == (5, 30, 3) and r.val_logprobs.shape == (5, 24, 3)
    assert torch.equal(r.labels, data.test.y) and torch.equal(r.val_labels, data.val.y)
    # Arc length of a segment: t · ‖ŵ2 − ŵ1‖.
    d = (flat(curve.endpoint(-1)) - flat(curve.endpoint(0))).double().norm().item()
    assert r.arc.tolist() == pytest.approx([t * d for t in ts], rel=1e-5) and r.length == pytest.approx(d, rel=1e-5)
    # The train loss carries 0.5·wd·‖w‖² of the point.
    end = r.rows.iloc[-1]
    sq = flat(curve.endpoint(-1)).double().square().sum().item()
    assert end["train_loss"] == pytest.approx(end["train_nll"] + 0.5 * wd * sq, rel=1e-5)
    rows = r.rows.to_dict("records")
    assert r.summary["test_error"] == path_summaries(rows, r.arc.tolist(), ["test_error"])["test_error"]
    assert set(r.summary) == {*MEASURES, "val_nll", "val_error", "test_ece", "test_ece_scaled"}
    f = r.rows["train_loss"].tolist()
    line = [f[0] + t * (f[-1] - f[0]) for t in ts]
    assert r.barrier["train_loss"] == pytest.approx(max(a - b for a, b in zip(f, line)))
    # Side by side with the curve: lengths, barriers and the ensembles of Sec. 4.
    c = measure_path(curve.template, curve, ts, eval_batches(data, 16), CPU, wd=wd)
    m = curve_metrics({"curve": c, "segment": r}, "probs")
    assert m["length"]["ratio"] == pytest.approx(c.length / r.length) and m["length"]["ratio"] > 1
    assert m["barrier"]["segment"] == r.barrier and m["curve"] == c.summary
    by_hand = ensemble.combine(list(c.logprobs))
    assert m["ensemble"]["curve"]["nll"] == pytest.approx(ensemble.nll(by_hand, data.test.y))
    assert {"ensemble_val", "ensemble"} <= set(m) and "curve_scaled" in m["ensemble"]


def test_measure_plane_grid_and_points():
    curve, data = bn_curve(), small_data(val=False)
    ts = torch.linspace(0, 1, 4, dtype=torch.float64)
    template = bn_net(5)
    batches = eval_batches(data, 16)
    messages = []
    p = measure_plane(curve, template, ts, batches, CPU, grid_points=3, margin=0.1, wd=0.0, progress=messages.append)
    assert len(messages) == 3 * 3 + 3
    assert p.alpha.shape == p.beta.shape == (3,) and all(p.grids[m].shape == (3, 3) for m in MEASURES)
    assert all(torch.isfinite(g).all() for g in p.grids.values())
    # ŵ1 measured on the plane is ŵ1 measured directly (origin of the plane: exact up to float64 → float32).
    direct = measure(bn_net(6), dict(curve.endpoint(0)), batches, CPU).row(0.0)
    assert p.points["w1"]["test_nll"] == pytest.approx(direct["test_nll"], rel=1e-5)
    assert torch.allclose(p.curve[[0, -1]], p.basis.coords[:2], atol=1e-4)
    s = p.summary()
    assert s["curve_off_plane"]["max_relative"] < 1e-5  # a quadratic Bezier lies in its plane
    assert s["endpoint_distance"] == pytest.approx(p.basis.coords[1, 0].item())
    g = p.as_dict()
    assert g["format"] == "modeconn.plane/1" and g["points"] == ("w1", "w2", "bend") and "aligned" not in g
    # An aligned endpoint off the plane is projected, its distance from the plane linear in t.
    end = {k: v + 0.1 for k, v in curve.endpoint(-1).items()}
    q = measure_plane(curve, template, ts, batches, CPU, grid_points=2, aligned_end=end)
    assert q.aligned.shape == (4, 2) and q.aligned_off_plane[0] == 0 and q.aligned_off_plane[-1] > 0
    assert torch.allclose(q.aligned_off_plane, ts * q.aligned_off_plane[-1])


def test_path_ensembles_by_hand():
    curve, data = bn_curve(), small_data()
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    batches = eval_batches(data, 16)
    c = measure_path(curve.template, curve, ts, batches, CPU)
    s = measure_path(bn_net(7), segment_of(curve, bn_net(7)), ts, batches, CPU)
    preds, val_preds = (
        {"curve": c.logprobs, "segment": s.logprobs},
        {"curve": c.val_logprobs, "segment": s.val_logprobs},
    )
    y, val_y = data.test.y, data.val.y
    r = path_ensembles(
        curve, bn_net(8), ts, preds, y, batches, CPU, seed=3, val_predictions=val_preds, val_labels=val_y
    )
    rows = r.rows.to_dict("records")
    assert [row["t"] for row in rows] == [0.0, 0.5, 1.0] and rows[0]["distance"] == 0
    assert rows[0]["curve_error"] == rows[0]["random_error"] == rows[0]["segment_error"] == rows[0]["curve_point_error"]
    both = ensemble.combine([c.logprobs[0], c.logprobs[1]])
    assert rows[1]["curve_error"] == pytest.approx(ensemble.error(both, y))
    assert rows[1]["curve_val_error"] == pytest.approx(
        ensemble.error(ensemble.combine(list(c.val_logprobs[:2])), val_y)
    )
    # The random point at t is ŵ1 + ‖φ(t) − ŵ1‖ · direction, BN recalibrated there.
    w1 = flat(curve.endpoint(0)).double()
    assert rows[1]["distance"] == pytest.approx((flat(curve.weights(0.5)).double() - w1).norm().item())
    point = unflatten(w1 + rows[1]["distance"] * random_direction(w1.numel(), 3), dict(curve.endpoint(0)))
    alone = measure(bn_net(9), point, batches, CPU)
    assert rows[1]["random_point_error"] == pytest.approx(alone.test_error)
    assert r.summary["endpoint_error"] == rows[0]["curve_point_error"]
    assert r.summary["best"]["curve"] == min(row["curve_error"] for row in rows)
    assert set(r.summary["by_t"]) == {"t=0.00", "t=0.50"} and "best_val" in r.summary


def test_budget_comparison_tables_over_cost_and_markdown():
    g, n, B = torch.Generator().manual_seed(0), 12, 4
    y, val_y = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (6,), generator=g)

    def lp(rows: int = n):
        return F.log_softmax(torch.randn(rows, 3, generator=g), 1)

    independent = [(lp(), lp(6)) for _ in range(2)]
    fge = [
        {
            "start_epoch": 2,
            "cost": 4,
            "snapshots": [{"epoch": e, "logprobs": lp(), "val_logprobs": lp(6)} for e in (1, 2)],
        }
        for _ in range(2)
    ]
    for run in fge:
        run["swa"] = {"epoch": 2, "logprobs": lp(), "val_logprobs": lp(6)}
    sse = [
        {
            "start_epoch": 0,
            "cost": 8,
            "snapshots": [{"epoch": e, "logprobs": lp(), "val_logprobs": lp(6)} for e in (4, 8)],
        }
    ]
    pool = budget.budget_members(B, independent, fge, sse, y, val_y)
    assert set(pool.splits) == {"test", "val"}
    assert sorted(m.cost for m in pool.members if m.method == "swa") == [4, 8]  # with each run's last snapshot
    result = budget.compare_budgets(pool, B, (1, 2), "probs")
    t = result.tables
    assert [t["1B"][m]["members"] for m in budget.METHODS] == [1, 1, 2, 1]
    assert [t["2B"][m]["members"] for m in budget.METHODS] == [2, 2, 4, 2]
    fge_1b = ensemble.combine([s["logprobs"] for s in fge[0]["snapshots"]])
    assert t["1B"]["fge"]["nll"] == pytest.approx(ensemble.nll(fge_1b, y))
    assert t["1B_over_seeds"]["fge"]["n"] == 2 and "val" in t and "val_error" in t["val"]["1B"]["ind"]
    assert list(result.over_cost) == list(budget.METHODS)
    assert result.over_cost["fge"]["members"].tolist() == [1, 2, 3, 4]
    assert result.over_cost["ind"]["epochs"].tolist() == [4, 8]
    setup = {"B": B, "ensemble": "probs", "test_samples": n, "val_samples": 6}
    text = budget.markdown(t, setup, (1, 2))
    assert "| FGE | test |" in text and "1B (4 ep)" in text and "(n = 2)" in text
    assert set(budget.reliability_at(pool, B)) == {"Ind", "SSE", "FGE", "SWA"}
    assert math.isclose(sum(budget.reliability_at(pool, B)["FGE"].count.tolist()), n)
