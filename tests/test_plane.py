"""The plane of Fig. 1 (Gram-Schmidt basis, grid, round trips) and the plane and path_ensembles stages."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from modeconn import plane as pl
from modeconn.curves import Curve
from modeconn.errors import ModeconnError
from modeconn.models import create_model
from modeconn.points import MEASURES
from modeconn.weights import flat, unflatten
from stages import path_ensembles, plane

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


@pytest.fixture
def curve_workspace(tiny_workspace):
    """The session's tiny workspace (conftest): the whole pipeline on the tiny config."""
    return tiny_workspace


@pytest.mark.parametrize("module", [plane, path_ensembles], ids=lambda m: m.__name__)
def test_help(module):
    r = invoke(module, "--help")
    assert r.exit_code == 0 and "--params" in r.output and "--device" in r.output and "--curve-eval" in r.output


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
