"""The plane of Fig. 1 (Gram-Schmidt basis, grid, round trips) and the plane and path_ensembles stages."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from modeconn import plane as pl
from modeconn.curves import Curve
from modeconn.data import eval_batches
from modeconn.errors import ModeconnError
from modeconn.models import create_model, from_spec
from modeconn.points import MEASURES, measure
from modeconn.weights import flat, unflatten
from stages import path_ensembles, plane, plane_points

from .stage_utils import invoke, tiny_params, write_params


def three_points(d: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d, generator=g) for _ in range(3))


def test_basis_is_orthonormal_and_reproduces_the_three_points():
    w1, w2, theta = three_points()
    b = pl.basis(w1, w2, theta)
    assert b.u.dtype == torch.float64
    gram = torch.stack([b.u, b.v]) @ torch.stack([b.u, b.v]).T
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64), atol=1e-12), gram
    assert torch.allclose(b.u, (w2 - w1).double() / (w2 - w1).double().norm())
    for w, (a, bb) in zip((w1, w2, theta), b.coords.tolist()):
        rebuilt = pl.point(b.origin, b.u, b.v, a, bb)
        assert torch.allclose(rebuilt, w.double(), atol=1e-6), f"point ({a}, {bb}) not rebuilt"
        assert torch.allclose(pl.project(w, *b[:3]), torch.tensor([a, bb], dtype=torch.float64), atol=1e-9)
    (a1, b1), (a2, b2), (_, b3) = b.coords.tolist()
    assert (a1, b1) == (0.0, 0.0) and b2 == 0.0 and b3 > 0
    assert math.isclose(a2, (w2 - w1).norm().item(), rel_tol=1e-6)


def test_basis_refuses_points_that_span_no_plane():
    w1, w2, _ = three_points()
    with pytest.raises(ModeconnError, match="on the segment"):
        pl.basis(w1, w2, 0.5 * (w1 + w2))  # a curve still at its linear initialisation
    with pytest.raises(ModeconnError, match="same point"):
        pl.basis(w1, w1, w2)


def test_grid_covers_the_points_with_the_margin():
    coords = torch.tensor([[0.0, 0.0], [10.0, 0.0], [4.0, 3.0]])
    alpha, beta = pl.grid(coords, grid_points=21, margin=0.2)
    assert alpha.shape == beta.shape == (21,)
    assert math.isclose(alpha[0].item(), -2.0) and math.isclose(alpha[-1].item(), 12.0)
    assert math.isclose(beta[0].item(), -0.6) and math.isclose(beta[-1].item(), 3.6)
    assert torch.all(alpha[1:] > alpha[:-1]) and torch.all(beta[1:] > beta[:-1])
    alpha, beta = pl.grid(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), 3, 0.5)  # flat: β gets α's extent
    assert alpha.tolist() == [-1.0, 1.0, 3.0] and beta.tolist() == [0.0, 1.0, 2.0]


def test_to_weights_and_project_round_trip():
    like = {"conv.weight": torch.zeros(4, 1, 3, 3), "conv.bias": torch.zeros(4), "fc.weight": torch.zeros(2, 4)}
    d = sum(t.numel() for t in like.values())
    w1, w2, theta = three_points(d, seed=1)
    b = pl.basis(w1, w2, theta)
    weights = pl.to_weights(b.origin, b.u, b.v, 0.7, -1.3, like)
    assert list(weights) == list(like) and all(weights[k].shape == like[k].shape for k in like)
    assert all(w.dtype == torch.float32 for w in weights.values())
    w = flat(weights)
    assert torch.allclose(pl.project(w, *b[:3]), torch.tensor([0.7, -1.3], dtype=torch.float64), atol=1e-5)
    assert pl.distance(w, *b[:3]).item() < 1e-5
    normal = torch.randn(d, dtype=torch.float64)
    normal -= (normal @ b.u) * b.u + (normal @ b.v) * b.v
    off = w.double() + 2.5 * normal / normal.norm()
    assert math.isclose(pl.distance(off, *b[:3]).item(), 2.5, rel_tol=1e-6)
    with pytest.raises(ModeconnError, match="does not fit"):
        unflatten(w[:-1], like)


def test_a_quadratic_bezier_lies_in_the_plane_longer_curves_do_not():
    template = create_model("mlp", 3, in_channels=1, input_size=4, width=8, depth=1)
    g = torch.Generator().manual_seed(0)
    ends = [{n: torch.randn(p.shape, generator=g) for n, p in template.named_parameters()} for _ in range(2)]
    for kind, n, in_plane in (("bezier", 3, True), ("bezier", 5, False), ("polychain", 3, True)):
        curve = Curve(template, *ends, kind, n)
        with torch.no_grad():
            for bend in curve.bends:
                bend.add_(torch.randn(bend.shape, generator=g))
        cp = curve.control_points()
        b = pl.basis(*(flat({k: v[i] for k, v in cp.items()}) for i in (0, n - 1, (n - 1) // 2)))
        with torch.no_grad():
            dist = max(pl.distance(flat(curve.weights(t)), *b[:3]).item() for t in torch.linspace(0, 1, 11).tolist())
        assert (dist < 1e-4) == in_plane, f"{kind} with {n} bends: {dist}"


def test_the_plane_through_three_networks_puts_each_at_its_grid_position_exactly(tiny_data):
    """Three networks at (0, 0), (2, 0) and (1, 1) of the plane (w1 of multiples of 1/8, steps along two unit
    axes: every number exact in float32 and float64). With no margin a 3 × 3 grid has nodes exactly at them: each
    named point's measures are the grid's at its node, bit for bit, and the basis rebuilds each network exactly."""
    template = create_model("mlp", 3, in_channels=1, input_size=12, width=8, depth=1, batch_norm=True)
    g = torch.Generator().manual_seed(0)
    w1 = {n: torch.randint(-8, 9, p.shape, generator=g).float() / 8 for n, p in template.named_parameters()}
    w = flat(w1)
    e = torch.zeros(2, w.numel())
    e[0, 3], e[1, w.numel() - 5] = 1.0, 1.0  # two unit axes of weight space
    nets = {"a": w1, "b": unflatten(w + 2 * e[0], w1), "c": unflatten(w + e[0] + e[1], w1)}
    batches = eval_batches(tiny_data, 32, bn_samples=48, train_samples=48)
    calls = []
    r = pl.measure_points_plane(nets, template, batches, grid_points=3, margin=0.0, wd=1e-3, progress=calls.append)
    assert len(calls) == 3 * 3 + 4
    assert torch.equal(r.basis.coords, torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]], dtype=torch.float64))
    assert r.alpha.tolist() == [0.0, 1.0, 2.0] and r.beta.tolist() == [0.0, 0.5, 1.0]
    assert list(r.points) == ["a", "b", "c", "centroid"] and r.names() == ("a", "b", "c")
    for (name, net), node in zip(nets.items(), ((0, 0), (2, 0), (1, 2))):
        a, b = r.points[name]["alpha"], r.points[name]["beta"]
        assert (r.alpha[node[0]].item(), r.beta[node[1]].item()) == (a, b), name
        rebuilt = pl.to_weights(r.basis.origin, r.basis.u, r.basis.v, a, b, w1)
        assert all(torch.equal(rebuilt[k], net[k]) for k in net), f"{name} not rebuilt exactly"
        for m in MEASURES:
            assert r.grids[m][node] == r.points[name][m], f"{name}: {m} at its grid node"
        direct = measure(template, net, batches._replace(val=None)).row(1e-3)
        assert all(direct[m] == r.points[name][m] for m in MEASURES), name
    assert (r.points["centroid"]["alpha"], r.points["centroid"]["beta"]) == pytest.approx((1.0, 1 / 3), abs=1e-12)
    d = r.as_dict()
    assert d["format"] == "modeconn.plane_points/1" and d["points"] == ("a", "b", "c")
    assert torch.equal(d["coords"], r.basis.coords) and d["test_error"].shape == (3, 3)
    s = r.summary()
    assert s["distances"] == pytest.approx({"a to b": 2.0, "a to c": math.sqrt(2), "b to c": math.sqrt(2)})
    with pytest.raises(ModeconnError, match="c lies on the line through a and b"):
        pl.measure_points_plane({**nets, "c": unflatten(w + e[0], w1)}, template, batches, grid_points=2)
    with pytest.raises(ModeconnError, match="three points other than"):
        pl.measure_points_plane({"a": w1, "b": nets["b"]}, template, batches)


@pytest.fixture
def curve_workspace(tiny_workspace):
    """The session's tiny workspace (conftest): the whole pipeline on the tiny config."""
    return tiny_workspace


@pytest.mark.parametrize("module", [plane, plane_points, path_ensembles], ids=lambda m: m.__name__)
def test_help(module):
    r = invoke(module, "--help")
    option = "--endpoints" if module is plane_points else "--curve-eval"
    assert r.exit_code == 0 and "--params" in r.output and "--device" in r.output and option in r.output


def test_plane_stage(curve_workspace, monkeypatch):
    monkeypatch.chdir(curve_workspace)
    r = invoke(plane, "--device", "cpu")
    assert r.exit_code == 0, r.output
    G = tiny_params()["plane"]["grid_points"]
    g = torch.load(curve_workspace / "data/plane/grid.pt", weights_only=True)
    assert g["alpha"].shape == g["beta"].shape == (G,)
    for m in MEASURES:
        assert g[m].shape == (G, G) and torch.isfinite(g[m]).all(), m
    assert ((g["test_error"] >= 0) & (g["test_error"] <= 1)).all()
    P = tiny_params()["eval"]["num_points"]
    assert g["curve"].shape == g["segment"].shape == (P, 2) and g["coords"].shape == (3, 2)
    assert torch.allclose(g["curve"][[0, -1]], g["coords"][:2], atol=1e-4)  # the curve starts and ends at ŵ1, ŵ2
    assert torch.allclose(g["segment"][:, 1], torch.zeros(P, dtype=torch.float64), atol=1e-4)
    assert g["alpha"][0] < 0 < g["coords"][1, 0] < g["alpha"][-1]  # margins on both sides
    s = json.loads((curve_workspace / "metrics/plane.json").read_text())
    run = json.loads((curve_workspace / "metrics/plane.run.json").read_text())
    assert run["grid_points"] == G and set(s["points"]) == {"w1", "w2", "bend"}
    assert s["curve_off_plane"]["max_relative"] < 1e-5  # a 3-bend Bezier lies in the plane
    assert run["train_samples"] == 96 and run["test_samples"] == 96
    assert s["grid"]["train_loss"]["min"] <= s["grid"]["train_loss"]["max"]
    for png in ("plane_train_loss.png", "plane_test_error.png"):
        assert (curve_workspace / "metrics" / png).stat().st_size > 1000


def test_plane_points_stage(curve_workspace, monkeypatch):
    """The tiny run's plane through seeds 0 and 1 and a file of its own (seed 0's checkpoint of epoch 1)."""
    monkeypatch.chdir(curve_workspace)
    r = invoke(plane_points, "--device", "cpu")
    assert r.exit_code == 0, r.output
    G, cfg = tiny_params()["plane_points"]["grid_points"], tiny_params()["plane_points"]
    g = torch.load(curve_workspace / "data/plane_points/grid.pt", weights_only=True)
    names = ("seed_0", "seed_1", cfg["points"][2]["file"])
    assert g["format"] == "modeconn.plane_points/1" and g["points"] == names and g["coords"].shape == (3, 2)
    for m in MEASURES:
        assert g[m].shape == (G, G) and torch.isfinite(g[m]).all(), m
    assert g["coords"][0].tolist() == [0.0, 0.0] and g["coords"][1, 1] == 0 and g["coords"][2, 1] > 0
    assert g["alpha"][0] < 0 < g["coords"][1, 0] < g["alpha"][-1]  # margins on both sides
    s = json.loads((curve_workspace / "metrics/plane_points.json").read_text())
    run = json.loads((curve_workspace / "metrics/plane_points.run.json").read_text())
    assert list(s["points"]) == [*names, "centroid"] and run["grid_points"] == G and run["wd"] == 5e-4
    ckpts = [torch.load(curve_workspace / f"data/endpoints/seed_{seed}/model.pt", weights_only=True) for seed in (0, 1)]
    names_of = [n for n, _ in from_spec(ckpts[0]["spec"]).named_parameters()]  # parameters, not BN's buffers
    w0, w1 = (flat({n: c["state_dict"][n] for n in names_of}).double() for c in ckpts)
    assert s["distances"]["seed_0 to seed_1"] == pytest.approx((w1 - w0).norm().item(), rel=1e-9)
    for png in ("plane_points_train_loss.png", "plane_points_test_error.png"):
        assert (curve_workspace / "metrics" / png).stat().st_size > 1000
    text = (curve_workspace / "metrics/report.md").read_text()
    assert "## The plane through three networks" in text and "plane_points_test_error.png" in text
    head = json.loads((curve_workspace / "metrics/headline.json").read_text())
    assert head["plane_points_centroid_test_error"] == s["points"]["centroid"]["test_error"]


def test_plane_points_errors_name_the_key(curve_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("--prepared", curve_workspace / "data/prepared", "--endpoints", curve_workspace / "data/endpoints")
    two = [{"seed": 0}, {"seed": 1}]
    for points, key in (
        (two, "plane_points.points must name three networks"),
        ([*two, {"seed": 0}], "plane_points.points[2] repeats an earlier point"),
        ([*two, {"seed": -1}], "plane_points.points[2].seed must be a non-negative integer"),
        ([*two, {"net": "a.pt"}], "plane_points.points[2] must be {seed: <an endpoint seed>} or {file:"),
        ([{"seed": 0}, {"seed": 7}, {"seed": 1}], "plane_points.points[1].seed: no endpoint of seed 7"),
        ([*two, {"file": "nowhere.pt"}], "plane_points.points[2].file: nowhere.pt not found"),
    ):
        write_params(tmp_path, tiny_params(plane_points__points=points))
        r = invoke(plane_points, *args, "--device", "cpu")
        assert r.exit_code == 1 and key in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "data/plane_points").exists()


def test_path_ensembles_stage(curve_workspace, monkeypatch):
    monkeypatch.chdir(curve_workspace)
    r = invoke(path_ensembles, "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(curve_workspace / "metrics/path_ensembles.csv").to_dict("records")
    assert [r["t"] for r in rows] == [0.0, 0.5, 1.0]
    errors = [c for c in rows[0] if c.endswith("_error")]
    assert {"curve_error", "segment_error", "random_error", "curve_point_error"} <= set(errors)
    assert all(0 <= r[c] <= 1 for r in rows for c in errors)
    first = rows[0]
    assert first["distance"] == 0
    assert first["curve_error"] == first["segment_error"] == first["random_error"] == first["curve_point_error"]
    assert rows[1]["distance"] > 0
    stored = torch.load(curve_workspace / "data/curve_eval/curve.pt", weights_only=True)
    probs = (stored["logprobs"][0].exp() + stored["logprobs"][1].exp()) / 2  # {ŵ1, φ(0.5)} by hand, (N, K)
    by_hand = (probs.argmax(1) != stored["labels"]).float().mean().item()
    assert rows[1]["curve_error"] == pytest.approx(by_hand, abs=1e-6)
    s = json.loads((curve_workspace / "metrics/path_ensembles.json").read_text())
    assert s["endpoint_error"] == first["curve_point_error"]
    assert s["endpoints_ensemble_error"] == rows[-1]["curve_error"]
    assert (curve_workspace / "metrics/path_ensembles.png").is_file()
    # The same ensembles on the validation split, from eval_curve's stored validation predictions.
    val = stored["val_logprobs"]  # (P, N_val, K)
    val_y = torch.load(curve_workspace / "data/prepared/data.pt", weights_only=True)["val_y"].long()
    probs = (val[0].exp() + val[1].exp()) / 2
    assert rows[1]["curve_val_error"] == pytest.approx((probs.argmax(1) != val_y).float().mean().item(), abs=1e-6)
    assert first["curve_val_error"] == first["random_val_error"] == first["segment_val_error"]
    assert s["best_val"]["curve"] == min(r["curve_val_error"] for r in rows)


def test_plane_errors_for_people(curve_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("--prepared", curve_workspace / "data/prepared", "--curve", curve_workspace / "data/curve")
    write_params(tmp_path, tiny_params(plane__grid_points=1))
    r = invoke(plane, *args)
    assert r.exit_code == 1 and "plane.grid_points" in r.output
    write_params(tmp_path, tiny_params())
    r = invoke(plane, *args, "--curve-eval", tmp_path / "nowhere", "--device", "cpu")
    assert r.exit_code == 1 and "eval_curve" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "data/plane").exists()
    write_params(tmp_path, tiny_params(path_ensembles__ensemble="median"))
    r = invoke(path_ensembles, *args)
    assert r.exit_code == 1 and "path_ensembles.ensemble" in r.output
