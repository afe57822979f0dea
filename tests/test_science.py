"""The science of the paper that the other tests leave open, each checked so that it fails when the code is wrong:
the curve objective (Sec. 3) and its optimiser, un-augmented BN recalibration and train-loss passes in eval mode,
temperature scaling fitted on validation (Sec. 4), the budget accounting (Sec. 5), the curve ensembles and the
stage's arc length against hand computations, and, on a tiny run, a curve whose worst test error is below the
segment's (Sec. 3, Fig. 2)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.optim.swa_utils import update_bn

from modeconn import curve_fit, ensemble
from modeconn.budget import at_budget, budget_members, compare_budgets
from modeconn.curves import Curve, curve_loss
from modeconn.data import Prepared, eval_batches, make_synthetic
from modeconn.data.loader import random_crop, random_flip
from modeconn.data.raw import DATASETS
from modeconn.models import create_model
from modeconn.points import measure
from modeconn.runtime import CPU
from stages import eval_curve, fit_curve, prepare, train_endpoint
from stages.kit.config import EvalConfig
from stages.kit.inputs import measurement_batches

from .stage_utils import invoke, tiny_params, write_params

# ----------------------------------------------------------------------------- numpy references


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def np_ensemble(members: list[np.ndarray], y: np.ndarray, temps: list[float] | None = None) -> dict:
    """Accuracy and NLL of the probability average of members (log-probabilities), each optionally at
    temperature T (softmax(logits / T); log-probabilities are logits up to a per-row constant)."""
    temps = temps or [1.0] * len(members)
    p = np.mean([np_softmax(m.astype(np.float64) / T) for m, T in zip(members, temps)], axis=0)
    return {"accuracy": float((p.argmax(1) == y).mean()), "nll": float(-np.log(p[np.arange(len(y)), y]).mean())}


def curve_ensembles_by_hand(c: list, s: list, y, temps: list[float]) -> dict:
    """What ``ensemble.curve_ensembles`` should give, in numpy: curve points ``c``, segment points ``s``."""
    return {
        "endpoints": np_ensemble([c[0], c[-1]], y),
        "curve": np_ensemble(c, y),
        "segment": np_ensemble(s, y),
        "curve_scaled": np_ensemble(c, y, temps),
        "endpoints_scaled": np_ensemble([c[0], c[-1]], y, [temps[0], temps[-1]]),
    }


def bezier_np(a: np.ndarray, bend: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * bend + t**2 * b


# ----------------------------------------------------------------------------- the curve objective


def convfc_pair(seed: int = 0):
    torch.manual_seed(seed)
    a = create_model("convfc", 3, in_channels=1, input_size=16, width=2, fc_width=8)
    b = create_model("convfc", 3, in_channels=1, input_size=16, width=2, fc_width=8)
    return a, b


def test_curve_objective_is_ce_plus_l2_of_the_point_not_of_the_bends():
    a, b = convfc_pair()
    wa, wb = parameters_to_vector(a.parameters()).detach(), parameters_to_vector(b.parameters()).detach()
    curve = Curve(copy.deepcopy(a), dict(a.named_parameters()), dict(b.named_parameters()), "bezier", 3)
    with torch.no_grad():  # a bend far off the segment: ‖φ(t)‖² and ‖θ‖² differ a lot
        curve.bends.add_(torch.randn(curve.bends.shape, generator=torch.Generator().manual_seed(1)))
    bend = curve.bends.detach()[0].clone()
    wd, seed = 0.05, 7
    x, y = torch.randn(10, 1, 16, 16), torch.randint(0, 3, (10,))
    loss, _ = curve_loss(curve, wd, torch.Generator().manual_seed(seed))(x, y)
    t = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()  # the t that call drew

    point = (1 - t) ** 2 * wa + 2 * t * (1 - t) * bend + t**2 * wb  # φ_θ(t), by hand
    net = copy.deepcopy(a)
    vector_to_parameters(point, net.parameters())
    ce = F.cross_entropy(net(x), y).item()
    expected = ce + 0.5 * wd * point.dot(point).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5), "objective ≠ CE(φ(t)) + 0.5·wd·‖φ(t)‖²"
    on_bends = ce + 0.5 * wd * (wa.dot(wa) + bend.dot(bend) + wb.dot(wb)).item()
    assert abs(on_bends - expected) > 100 * abs(loss.item() - expected) + 1e-3, "the test cannot tell the two apart"

    # Its gradient w.r.t. the bend is the chain rule through φ: 2t(1−t) · ∇_w [CE + 0.5·wd·‖w‖²] at w = φ(t).
    loss.backward()
    w = point.clone().requires_grad_(True)
    parts = torch.split(w, [p.numel() for p in a.parameters()])
    params = {n: v.view_as(p) for (n, p), v in zip(a.named_parameters(), parts)}
    ref = F.cross_entropy(functional_call(a, params, (x,)), y) + 0.5 * wd * w.dot(w)
    (grad,) = torch.autograd.grad(ref, w)
    assert torch.allclose(curve.bends.grad[0], 2 * t * (1 - t) * grad, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------- BN and train-loss passes


def augmented_data() -> Prepared:
    train, test = make_synthetic(n_train=90, n_test=40, num_classes=3, channels=1, size=16, seed=3)
    val = make_synthetic(n_train=30, n_test=1, num_classes=3, channels=1, size=16, seed=4)[0]
    info = dataclasses.replace(
        DATASETS["synthetic"], num_classes=3, channels=1, size=16, mean=(0.4,), std=(0.25,), augment="crop_flip"
    )
    return Prepared(info, train, test, val)


def normalised(split, info) -> torch.Tensor:
    return (split.x.float() / 255 - info.mean[0]) / info.std[0]


def test_measurement_passes_are_unaugmented_even_when_training_augments():
    data = augmented_data()
    cfg = EvalConfig(num_points=3, batch_size=32, bn_samples=0, train_samples=0, ensemble="probs", seed=0, align=True)
    for batches in (eval_batches(data, 32), measurement_batches(data, cfg, CPU)):
        for name in ("bn", "train", "test", "val"):
            loader = getattr(batches, name)
            x = torch.cat([xb for xb, _ in loader])
            split = data.val if name == "val" else data.test if name == "test" else data.train
            assert torch.allclose(x, normalised(split, data.info), atol=1e-6), f"{name} pass is not the plain images"
            again = torch.cat([xb for xb, _ in loader])
            assert torch.equal(x, again), f"{name} pass changes between passes (random augmentation)"


def test_measure_recalibrates_bn_on_plain_images_then_evaluates_in_eval_mode():
    """measure() against a reference: update_bn over the plain training images in order, then eval mode."""
    data = augmented_data()
    torch.manual_seed(0)
    model = create_model("convfc", 3, in_channels=1, input_size=16, width=2, fc_width=8, batch_norm=True)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    result = measure(copy.deepcopy(model), weights, eval_batches(data, 32), CPU)

    def reference(bn_x: torch.Tensor, train_mode: bool = False) -> dict:
        net = copy.deepcopy(model)
        update_bn([(xb, None) for xb in bn_x.split(32)], net)
        net.train(train_mode)
        with torch.no_grad():
            out = {}
            for name, split in (("train", data.train), ("test", data.test)):
                logits = torch.cat([net(xb) for xb in normalised(split, data.info).split(32)])
                out[name] = F.cross_entropy(logits, split.y).item()
        return out

    plain = reference(normalised(data.train, data.info))
    assert result.train_nll == pytest.approx(plain["train"], rel=1e-5)
    assert result.test_nll == pytest.approx(plain["test"], rel=1e-5)
    # The references a wrong implementation would match are far off: so the test can fail.
    g = torch.Generator().manual_seed(0)
    aug_x = random_flip(random_crop(data.train.x, torch.randint(0, 9, (90, 2), generator=g)), torch.rand(90) < 0.5)
    augmented = reference((aug_x.float() / 255 - 0.4) / 0.25)
    in_train_mode = reference(normalised(data.train, data.info), train_mode=True)
    for wrong in (augmented, in_train_mode):
        assert abs(wrong["test"] - plain["test"]) > 1e-3


# ----------------------------------------------------------------------------- ensembles by hand


def test_curve_ensembles_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    curve = [F.log_softmax(3 * torch.randn(6, 3, generator=g), 1) for _ in range(4)]
    segment = [F.log_softmax(3 * torch.randn(6, 3, generator=g), 1) for _ in range(4)]
    temps = [0.5, 2.0, 3.0, 1.5]
    got = ensemble.curve_ensembles(curve, segment, y, "probs", temps)
    c, s, yy = [m.numpy() for m in curve], [m.numpy() for m in segment], y.numpy()
    want = curve_ensembles_by_hand(c, s, yy, temps)
    assert got["members"] == 4
    for key, w in want.items():
        assert got[key]["accuracy"] == pytest.approx(w["accuracy"]), key
        assert got[key]["nll"] == pytest.approx(w["nll"], rel=1e-5), key
    assert abs(want["curve_scaled"]["nll"] - want["curve"]["nll"]) > 1e-2, "temperatures must matter here"


def test_temperature_is_the_nll_optimum_on_the_data_it_is_given():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (400,), generator=g)
    logits = 4 * F.one_hot(y, 5).float() + torch.randn(400, 5, generator=g)
    noisy = torch.where(torch.rand(400, generator=g) < 0.4, torch.randint(0, 5, (400,), generator=g), y)
    lp = F.log_softmax(logits, 1)
    for labels in (y, noisy):
        T = ensemble.fit_temperature(lp, labels)
        grid = np.linspace(0.2, 10, 2000)
        best = grid[np.argmin([ensemble.nll(ensemble.scale(lp, t), labels) for t in grid])]
        assert T == pytest.approx(best, rel=0.02)
    assert ensemble.fit_temperature(lp, noisy) > 1.5 * ensemble.fit_temperature(lp, y)


# ----------------------------------------------------------------------------- budgets


def test_budget_accounting_tells_the_variants_apart():
    """B = 6, three seeds; FGE: 3 runs from epoch 4, 2 epochs, snapshots every 0.5 epoch; SSE: one 18-epoch run
    with 6 cycles. Member costs by hand: pretraining counted per FGE run, nothing over budget."""
    B, g, n = 6, torch.Generator().manual_seed(0), 8
    labels = torch.randint(0, 3, (n,), generator=g)

    def lp():
        return F.log_softmax(torch.randn(n, 3, generator=g), 1)

    independent = [(lp(), None) for _ in (0, 1, 2)]
    fge_runs = [
        {
            "seed": s,
            "start_epoch": 4,
            "cost": 6,
            "snapshots": [{"epoch": e, "logprobs": lp()} for e in (0.5, 1, 1.5, 2)],
        }
        for s in (0, 1, 2)
    ]
    sse_runs = [
        {
            "seed": 0,
            "start_epoch": 0,
            "cost": 18,
            "snapshots": [{"epoch": 3 * j, "logprobs": lp()} for j in range(1, 7)],
        }
    ]
    pool = budget_members(B, independent, fge_runs, sse_runs, labels, val_labels=torch.zeros(2, dtype=torch.long))
    members, splits, singles = pool.members, pool.splits, pool.singles
    assert torch.equal(splits["test"], labels) and "val" not in splits  # the members have no val predictions
    costs = {m: sorted(x.cost for x in members if x.method == m) for m in ("ind", "fge", "sse")}
    assert costs["ind"] == [6, 12, 18]
    # run r: r full runs of (4 + 2) epochs before it, then its own 4 epochs of pretraining, then the snapshot.
    assert costs["fge"] == [4.5, 5, 5.5, 6, 10.5, 11, 11.5, 12, 16.5, 17, 17.5, 18]
    assert costs["sse"] == [3, 6, 9, 12, 15, 18]
    # Each FGE replicate at 1B is one run alone, its pretraining counted: all four snapshots fit in 6 epochs.
    assert [sorted(m.cost for m in rep) for rep in singles["fge"]] == [[4.5, 5, 5.5, 6]] * 3

    result = compare_budgets(pool, B, budgets=(1, 2, 3), method="probs").tables
    expect = {
        "1B": {"ind": 1, "fge": 4, "sse": 2},
        "2B": {"ind": 2, "fge": 8, "sse": 4},
        "3B": {"ind": 3, "fge": 12, "sse": 6},
    }
    for k, counts in expect.items():
        for m, count in counts.items():
            assert result[k][m]["members"] == count, (k, m)
    # The ensemble at 2B is exactly the members of cost ≤ 12, nothing over budget (cost 12.5 would be).
    chosen = [x.logprobs for x in sorted(members, key=lambda x: x.cost) if x.method == "fge" and x.cost <= 12]
    assert result["2B"]["fge"]["nll"] == pytest.approx(ensemble.nll(ensemble.combine(chosen), labels))
    late = [dataclasses.replace(x, cost=x.cost + 0.5) for x in members if x.method == "fge"]
    assert at_budget(late, 12, labels)["members"] == 7  # a member half an epoch over B is left out


# ----------------------------------------------------------------------------- a tiny run through the stages


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """prepare, two endpoints, fit_curve (its optimiser recorded), then eval_curve with the validation labels
    partly relabelled, so that validation and test have different optimal temperatures."""
    root = tmp_path_factory.mktemp("science")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    sgd_calls = []
    real_sgd = curve_fit.make_sgd

    def recording_sgd(params, lr, momentum, wd):
        params = list(params)
        opt = real_sgd(params, lr, momentum, wd)
        sgd_calls.append({"params": params, "wd": wd, "optimizer": opt})
        return opt

    mp.setattr(curve_fit, "make_sgd", recording_sgd)
    params = tiny_params(
        train__epochs=4,
        curve__epochs=6,
        curve__lr=0.05,
        eval__num_points=7,
        eval__train_samples=0,
        data__synthetic__n_test=192,
    )
    write_params(root, params)
    for module, *args in [(prepare,), (train_endpoint, "--seed", 0), (train_endpoint, "--seed", 1), (fit_curve,)]:
        r = invoke(module, *args, *([] if module is prepare else ["--device", "cpu"]))
        assert r.exit_code == 0, f"{module.__name__}: {r.output}"
    blob = torch.load(root / "data/prepared/data.pt")
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(blob["val_y"].shape, generator=g) < 0.5
    blob["val_y"] = torch.where(flip, (blob["val_y"] + 1) % 4, blob["val_y"])
    torch.save(blob, root / "data/prepared/data.pt")
    r = invoke(eval_curve, "--device", "cpu")
    assert r.exit_code == 0, r.output
    yield root, sgd_calls, params
    mp.undo()


def test_fit_curve_trains_the_bends_only_without_optimizer_weight_decay(run):
    root, calls, params = run
    (call,) = calls
    assert call["wd"] == 0.0 and call["optimizer"].param_groups[0]["weight_decay"] == 0.0
    (bends,) = call["params"]
    assert bends.shape[0] == 1, "one trainable bend (num_bends = 3), endpoints fixed"
    saved = torch.load(root / "data/curve/curve.pt")
    assert saved["wd"] == params["curve"]["wd"] > 0, "the objective's wd is the curve's, applied to φ(t)"


def test_temperature_is_fitted_on_validation_not_test(run):
    root, _, _ = run
    rows = [r for r in _csv(root / "metrics/curve_eval.csv") if r["path"] == "curve"]
    stored = torch.load(root / "data/curve_eval/curve.pt")
    data = torch.load(root / "data/prepared/data.pt")
    gaps = []
    for i, r in enumerate(rows):
        on_val = ensemble.fit_temperature(stored["val_logprobs"][i], data["val_y"])
        on_test = ensemble.fit_temperature(stored["logprobs"][i], data["test_y"])
        assert float(r["temperature"]) == pytest.approx(on_val, rel=1e-6), f"t={r['t']}: not the validation fit"
        gaps.append(abs(on_val - on_test) / on_test)
    assert min(gaps) > 0.2, f"the splits' optimal temperatures must differ for the test to mean anything: {gaps}"


def test_stage_curve_ensembles_against_a_hand_computation(run):
    root, _, _ = run
    summary = json.loads((root / "metrics/curve.json").read_text())["ensemble"]
    curve, segment = torch.load(root / "data/curve_eval/curve.pt"), torch.load(root / "data/curve_eval/segment.pt")
    y = curve["labels"].numpy()
    temps = [float(r["temperature"]) for r in _csv(root / "metrics/curve_eval.csv") if r["path"] == "curve"]
    c, s = [m.numpy() for m in curve["logprobs"]], [m.numpy() for m in segment["logprobs"]]
    want = curve_ensembles_by_hand(c, s, y, temps)
    for key, w in want.items():
        assert summary[key]["accuracy"] == pytest.approx(w["accuracy"]), key
        assert summary[key]["nll"] == pytest.approx(w["nll"], rel=1e-5), key


def test_stage_arc_length_against_the_bezier_by_hand(run):
    """The eval_curve stage's arc (its stored cumulative lengths and its length metrics) against the polyline
    through φ(t_i) computed in numpy from the saved control points; the segment's length is ‖ŵ2 − ŵ1‖."""
    root, _, params = run
    points = torch.load(root / "data/curve/curve.pt")["control_points"]
    a, bend, b = (np.concatenate([v[i].double().numpy().ravel() for v in points.values()]) for i in range(3))
    ts = np.linspace(0, 1, params["eval"]["num_points"])
    phi = np.stack([bezier_np(a, bend, b, t) for t in ts])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(phi, axis=0), axis=1))])
    stored = torch.load(root / "data/curve_eval/curve.pt")["arc"].double().numpy()
    np.testing.assert_allclose(stored, arc, rtol=1e-4)
    length = json.loads((root / "metrics/curve.json").read_text())["length"]
    assert length["curve"] == pytest.approx(arc[-1], rel=1e-4)
    assert length["segment"] == pytest.approx(float(np.linalg.norm(b - a)), rel=1e-4)
    assert length["ratio"] == pytest.approx(arc[-1] / np.linalg.norm(b - a), rel=1e-4)
    assert length["ratio"] > 1 + 1e-3, "a trained bend leaves the segment: the curve is longer"
    seg = torch.load(root / "data/curve_eval/segment.pt")["arc"].double().numpy()
    np.testing.assert_allclose(seg, ts * np.linalg.norm(b - a), rtol=1e-4)


def test_fitted_curve_is_better_than_the_segment_at_its_worst(run):
    root, _, _ = run
    s = json.loads((root / "metrics/curve.json").read_text())
    curve, segment = s["curve"]["test_error"]["max"], s["segment"]["test_error"]["max"]
    assert curve < segment - 0.05, f"curve worst test error {curve:.3f} vs segment {segment:.3f}"
    assert s["curve"]["train_loss"]["max"] < s["segment"]["train_loss"]["max"]


def _csv(path):
    return list(csv.DictReader(path.open()))


def test_numpy_reference_is_a_probability_average():
    # The reference itself, on the case of tests/test_ensemble.py: mean probabilities (0.6, 0.4), (0.3, 0.7).
    a, b = np.log([[0.9, 0.1], [0.4, 0.6]]), np.log([[0.3, 0.7], [0.2, 0.8]])
    r = np_ensemble([a, b], np.array([0, 1]))
    assert r["accuracy"] == 1.0 and r["nll"] == pytest.approx(-(math.log(0.6) + math.log(0.7)) / 2)
