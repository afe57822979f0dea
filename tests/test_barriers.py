"""The barrier card (modeconn.barriers): each definition on paths whose values are known in closed form, the 2%
verdict, the card over pairs, and a path measured with the endpoints' BatchNorm statistics interpolated against a
direct computation (a plain network holding the interpolated state dict, as a user who interpolates checkpoints
builds it)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from modeconn import ensemble
from modeconn.barriers import (
    CARD_COLUMNS,
    NO_BN,
    PATHS,
    STABLE_BELOW,
    along_t_mean,
    along_t_rows,
    barrier_card,
    barrier_mean_ends,
    buffers_of,
    card_over_pairs,
    card_pairs,
    card_record,
    curve_of_pair,
    interpolated_buffers,
    is_stable,
    measure_pair,
    measure_pairs,
    measure_path_interpolated_bn,
    pairs_of,
    pairs_points,
    path_cards,
    repair_effect,
    split_states,
    worst,
)
from modeconn.curves import Curve
from modeconn.data import DATASETS, Prepared, eval_batches, make_synthetic
from modeconn.errors import ModeconnError
from modeconn.path import loss_barrier, measure_path
from modeconn.points import MEASURES
from modeconn.report import barrier_card_lines
from modeconn.runtime import CPU, Runtime
from modeconn.train import predict

GRID = [k / 20 for k in range(21)]  # t = 0, 0.05, …, 1 (holds t = ½ and t = 0.6)


def rows_of(f, ts=GRID, measure: str = "train_loss") -> pd.DataFrame:
    return pd.DataFrame({"t": ts, measure: [f(t) for t in ts]})


def card_row(card: pd.DataFrame, measure: str, bn: str = "recalibrated") -> pd.Series:
    (i,) = card.index[(card["measure"] == measure) & (card["bn"] == bn)]
    return card.loc[i]


# --- the definitions on closed forms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    # f(t) = a + e·t + h·4t(1 − t) = a + e·t + h − 4h (t − ½)²: a quadratic in t over the straight line a + e·t.
    # h > 0, a hump: the gap to the line is 4h t(1 − t), largest (h) at t = ½, so barrier_linear = h for any tilt e;
    # f' = e + 4h(1 − 2t) = 0 at t* = ½ + e/(8h) = 0.6 (a = 1, e = 0.4, h = 0.5), f(t*) = 1 + 0.24 + 2·0.6·0.4 = 1.72,
    # and barrier_mean_ends = 1.72 − ½(1 + 1.4) = 0.52. h < 0, a bowl: convex, never above the line: barrier_linear
    # = 0; its highest point is its higher end, f(1) = 1.4, and barrier_mean_ends = 1.4 − 1.2 = 0.2.
    "h, worst_value, worst_t, mean_ends, linear",
    [(0.5, 1.72, 0.6, 0.52, 0.5), (-0.5, 1.4, 1.0, 0.2, 0.0)],
    ids=["hump", "bowl"],
)
def test_a_quadratic_along_t_by_hand(h, worst_value, worst_t, mean_ends, linear):
    card = barrier_card(rows_of(lambda t: 1 + 0.4 * t + h * 4 * t * (1 - t)))
    row = card_row(card, "train_loss")
    assert (row["start"], row["end"]) == pytest.approx((1.0, 1.4))
    assert row["worst"] == pytest.approx(worst_value, abs=1e-12)
    assert row["worst_t"] == pytest.approx(worst_t)
    assert row["barrier_mean_ends"] == pytest.approx(mean_ends, abs=1e-12)
    assert row["barrier_linear"] == pytest.approx(linear, abs=1e-12)
    assert pd.isna(row["stable"]), "a loss gets no stable/unstable verdict"


def test_a_quadratic_bowl_in_weight_space_along_its_segment():
    """L(w) = ½ (w_1² + 4 w_2²) on the segment from (−1, 0) to (2, 0): f(t) = ½ (3t − 1)², convex, lowest at
    t = ⅓; ends 0.5 and 2."""
    a, b = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 0.0], dtype=torch.float64)

    def loss(t: float) -> float:
        w = (1 - t) * a + t * b
        return float(0.5 * (w[0] ** 2 + 4 * w[1] ** 2))

    row = card_row(barrier_card(rows_of(loss)), "train_loss")
    assert (row["worst"], row["worst_t"]) == pytest.approx((2.0, 1.0))
    assert row["barrier_mean_ends"] == pytest.approx(2.0 - 0.5 * (0.5 + 2.0))  # 0.75: only the ends' difference
    assert row["barrier_linear"] == 0.0


def ring_loss(w: torch.Tensor, h: float) -> float:
    """Two basins of the segment joined around the hill: L(w) = h (‖w‖² − 1)², zero on the unit circle, h at 0."""
    return float(h * (w.pow(2).sum() - 1) ** 2)


def test_two_basins_a_double_well_along_the_segment_and_none_along_the_curve_around_it():
    """On the segment from (−1, 0) to (1, 0), x = 2t − 1 and f(t) = h (x² − 1)² = 16 h t² (1 − t)²: a double well
    along t with its ends at the bottoms (f = 0) and its top h at t = ½. The half circle w(t) = (−cos πt, sin πt)
    stays at the bottom: every barrier 0 (Garipov et al.'s point, and each definition agrees)."""
    h = 0.8
    a, b = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    segment = rows_of(lambda t: ring_loss((1 - t) * a + t * b, h))
    assert segment["train_loss"].tolist() == pytest.approx([16 * h * t**2 * (1 - t) ** 2 for t in GRID], abs=1e-12)
    row = card_row(barrier_card(segment), "train_loss")
    assert (row["worst"], row["worst_t"]) == pytest.approx((h, 0.5))
    assert row["barrier_mean_ends"] == pytest.approx(h) and row["barrier_linear"] == pytest.approx(h)

    curve = rows_of(lambda t: ring_loss(torch.tensor([-math.cos(math.pi * t), math.sin(math.pi * t)]).double(), h))
    row = card_row(barrier_card(curve), "train_loss")
    for column in ("worst", "barrier_mean_ends", "barrier_linear"):
        assert row[column] == pytest.approx(0.0, abs=1e-12), column


def test_a_monotone_path_has_no_barrier_against_the_line_but_a_worst_value_and_half_its_rise():
    """f(t) = 0.1 + 0.3 t² rises from 0.1 to 0.4 and stays below its chord: barrier_linear = 0; its worst value is
    its end, 0.4 at t = 1, and barrier_mean_ends = 0.4 − ½ (0.1 + 0.4) = 0.15, half the rise."""
    row = card_row(barrier_card(rows_of(lambda t: 0.1 + 0.3 * t * t)), "train_loss")
    assert row["barrier_linear"] == 0.0
    assert (row["worst"], row["worst_t"]) == pytest.approx((0.4, 1.0))
    assert row["barrier_mean_ends"] == pytest.approx(0.15)


def test_asymmetric_ends_with_a_hump_near_the_lower_end_part_the_two_barriers():
    """Test error on the straight line 0.10 + 0.20 t but 0.35 at t = 0.1: against the line the hump is
    0.35 − 0.12 = 0.23; against the mean of the ends (0.20) it is 0.35 − 0.20 = 0.15."""
    ts = [k / 10 for k in range(11)]
    errors = [0.35 if k == 1 else 0.10 + 0.20 * t for k, t in enumerate(ts)]
    row = card_row(barrier_card(pd.DataFrame({"t": ts, "test_error": errors})), "test_error")
    assert (row["worst"], row["worst_t"]) == pytest.approx((0.35, 0.1))
    assert row["barrier_linear"] == pytest.approx(0.23)
    assert row["barrier_mean_ends"] == pytest.approx(0.15)
    assert row["barrier_linear"] > row["barrier_mean_ends"]
    assert not row["stable"]


def test_the_definitions_as_functions_and_bad_grids():
    assert worst([0.0, 0.5, 1.0], [1.0, 3.0, 3.0]) == (3.0, 0.5), "the first t of equal maxima"
    assert barrier_mean_ends([0.2, 0.5, 0.4]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="increase strictly"):
        barrier_card(pd.DataFrame({"t": [0.0, 0.0, 1.0], "test_error": [0.1, 0.2, 0.1]}))
    with pytest.raises(ValueError, match="NaN"):
        barrier_card(pd.DataFrame({"t": [0.0, 0.5, 1.0], "test_error": [0.1, math.nan, 0.1]}))
    with pytest.raises(ValueError, match="no column test_nll"):
        barrier_card(pd.DataFrame({"t": [0.0, 1.0], "test_error": [0.1, 0.1]}), measures=["test_nll"])


# --- Frankle et al.'s verdict -------------------------------------------------------------------------------------


@pytest.mark.parametrize("peak, stable", [(0.129, True), (0.131, False)])
def test_the_two_percent_verdict_on_both_sides_of_the_threshold(peak, stable):
    """Ends 0.10 and 0.12 (mean 0.11): a peak of 0.129 is a barrier of 1.9% (stable), 0.131 one of 2.1%."""
    rows = pd.DataFrame({"t": [0.0, 0.5, 1.0], "test_error": [0.10, peak, 0.12], "test_nll": [0.3, 0.9, 0.3]})
    card = barrier_card(rows)
    assert card_row(card, "test_error")["barrier_mean_ends"] == pytest.approx(peak - 0.11)
    assert bool(card_row(card, "test_error")["stable"]) is stable
    assert pd.isna(card_row(card, "test_nll")["stable"])
    assert STABLE_BELOW == 0.02 and is_stable(0.0199) and not is_stable(0.02), "below 2%, not at it"


# --- the card of a measured path, recalibrated and not -----------------------------------------------------------


def small_data() -> Prepared:
    """1×8×8 images of 3 classes: train 48, test 24."""
    train, test = make_synthetic(n_train=48, n_test=24, num_classes=3, channels=1, size=8, seed=0)
    info = dataclasses.replace(DATASETS["synthetic"], num_classes=3, channels=1, size=8)
    return Prepared(info, train, test, None)


def bn_convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def trained_statistics(net: nn.Module, data: Prepared, scale: float) -> nn.Module:
    """Running statistics of its own (update_bn on the training images scaled by ``scale``, so that the two
    endpoints' statistics differ) and a count of batches tracked, as a checkpoint carries them."""
    batches = [(x * scale, y) for x, y in eval_batches(data, 16).bn]
    update_bn(batches, net)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_batches_tracked.fill_(int(100 * scale))
    return net


def endpoints(data: Prepared) -> tuple[nn.Module, nn.Module]:
    return trained_statistics(bn_convnet(0), data, 1.0), trained_statistics(bn_convnet(1), data, 3.0)


def direct(state: dict[str, torch.Tensor], data: Prepared, runtime: Runtime = CPU, batch: int = 16) -> dict:
    """A plain network loaded with ``state`` (parameters and buffers), in eval mode: train and test NLL/error."""
    net = bn_convnet(2)
    net.load_state_dict(state)
    net.eval()
    if runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    b = eval_batches(data, batch, channels_last=runtime.channels_last)
    out = {}
    for split, loader in (("train", b.train), ("test", b.test)):
        lp, y = predict(net, loader, runtime)
        out[f"{split}_nll"], out[f"{split}_error"] = ensemble.nll(lp, y), ensemble.error(lp, y)
    return out


def naive_state(a: nn.Module, b: nn.Module, t: float) -> dict[str, torch.Tensor]:
    """What a user who interpolates two checkpoints writes: every float entry (1 − t)·A + t·B, the rest A's."""
    sa, sb = a.state_dict(), b.state_dict()
    return {k: (1 - t) * v + t * sb[k] if v.is_floating_point() else v.clone() for k, v in sa.items()}


def test_measured_without_recalibration_is_the_interpolated_state_dict_evaluated_directly():
    data = small_data()
    a, b = endpoints(data)
    template = bn_convnet(5)
    before = copy.deepcopy(template.state_dict())
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    segment = lambda t: {k: (1 - t) * v.detach() + t * pb[k].detach() for k, v in pa.items()}
    ts = [0.0, 0.25, 0.5, 1.0]
    buffers = (buffers_of(template, a.state_dict()), buffers_of(template, b.state_dict()))
    rows = measure_path_interpolated_bn(template, segment, ts, eval_batches(data, 16), buffers, wd=1e-2)
    assert list(rows.columns) == ["t", *MEASURES]
    for t, row in zip(ts, rows.to_dict("records")):
        want = direct(naive_state(a, b, t), data)
        for m in ("train_nll", "test_nll"):
            assert row[m] == pytest.approx(want[m], rel=1e-6), (t, m)
        for m in ("train_error", "test_error"):
            assert row[m] == want[m], (t, m)
        l2 = sum(float((w.float() ** 2).sum()) for w in segment(t).values())
        assert row["train_loss"] == pytest.approx(row["train_nll"] + 0.5 * 1e-2 * l2, rel=1e-6)
    assert all(torch.equal(v, template.state_dict()[k]) for k, v in before.items()), "template buffers changed"
    assert template.training, "the template's mode is restored"

    # num_batches_tracked (an integer buffer) is A's at every t; the statistics are interpolated
    at = interpolated_buffers(*buffers)(0.25)
    assert int(at["1.num_batches_tracked"]) == 100
    assert torch.allclose(at["1.running_mean"], 0.75 * a[1].running_mean + 0.25 * b[1].running_mean)

    # what the card puts side by side: with the path measured recalibrated at each point
    recal = measure_path(template, segment, ts, eval_batches(data, 16), wd=1e-2)
    card = barrier_card(recal, rows)
    assert list(card.columns) == list(CARD_COLUMNS)
    assert card[["measure", "bn"]].values.tolist() == [
        [m, bn] for m in MEASURES for bn in ("recalibrated", "interpolated")
    ]
    for m in MEASURES:
        assert card_row(card, m)["barrier_linear"] == pytest.approx(recal.barrier[m]), m
        assert card_row(card, m, "interpolated")["barrier_linear"] == pytest.approx(
            loss_barrier(ts, rows[m].tolist())
        ), m
    assert recal.rows["test_nll"][2] != pytest.approx(rows["test_nll"][2]), "recalibration changes the midpoint"


def test_a_curve_with_a_bend_the_gpu_settings_forced_and_a_state_dict_refused():
    """Along a Bezier curve the parameters are φ(t) and the buffers the endpoints', linear in t; bf16 autocast and
    channels_last forced on the CPU give the direct computation's numbers under the same settings."""
    data = small_data()
    a, b = endpoints(data)
    rt = Runtime(precision="bf16", channels_last=True)
    curve = Curve(bn_convnet(6), dict(a.named_parameters()), dict(b.named_parameters()), "bezier", 3)
    with torch.no_grad():
        curve.bends.add_(0.1 * torch.randn(curve.bends.shape, generator=torch.Generator().manual_seed(0)))
    curve.use_channels_last()
    buffers = (buffers_of(curve.template, a.state_dict()), buffers_of(curve.template, b.state_dict()))
    ts = [0.0, 0.5, 1.0]
    batches = eval_batches(data, 16, channels_last=True)
    rows = measure_path_interpolated_bn(curve.template, curve, ts, batches, buffers, rt)
    for t, row in zip(ts, rows.to_dict("records")):
        state = {**interpolated_buffers(*buffers)(t), **{k: v.contiguous() for k, v in curve.weights(t).items()}}
        want = direct(state, data, rt)
        for m in ("train_nll", "test_nll"):
            assert row[m] == pytest.approx(want[m], rel=1e-5), (t, m)
        for m in ("train_error", "test_error"):
            assert row[m] == pytest.approx(want[m], abs=1 / 24 + 1e-9), (t, m)  # one image at most under bf16
    with pytest.raises(ModeconnError, match="buffers"):
        measure_path_interpolated_bn(curve.template, curve.state_at, ts, batches, buffers, rt)
    with pytest.raises(ModeconnError, match="no buffer"):
        buffers_of(curve.template, dict(a.named_parameters()))


# --- over pairs ---------------------------------------------------------------------------------------------------


def test_every_pair_and_the_mean_and_std_over_three_pairs():
    """Three pairs whose test error barriers (above the mean of the ends, 0.10) are 0.005, 0.010, 0.015: mean
    0.010 (stable), sample std 0.005; the test NLL barriers 0.2, 0.4, 0.9: mean 0.5, std √0.13."""
    cards = {
        pair: barrier_card(
            pd.DataFrame({"t": [0.0, 0.5, 1.0], "test_error": [0.10, 0.10 + e, 0.10], "test_nll": [0.3, 0.3 + n, 0.3]}),
            pd.DataFrame({"t": [0.0, 0.5, 1.0], "test_error": [0.10, 0.20, 0.10], "test_nll": [0.3, 1.3, 0.3]}),
        )
        for pair, e, n in (((0, 1), 0.005, 0.2), ((0, 2), 0.010, 0.4), ((1, 2), 0.015, 0.9))
    }
    table = card_over_pairs(cards)
    assert list(table.columns) == ["pair", *CARD_COLUMNS]
    assert table["pair"].unique().tolist() == ["0-1", "0-2", "1-2", "mean", "std"]
    assert len(table) == 5 * 4  # (3 pairs + mean + std) × (2 measures × 2 BN treatments)

    def at(pair, measure, bn="recalibrated"):
        (i,) = table.index[(table["pair"] == pair) & (table["measure"] == measure) & (table["bn"] == bn)]
        return table.loc[i]

    assert at("0-2", "test_error")["barrier_mean_ends"] == pytest.approx(0.010)
    assert at("mean", "test_error")["barrier_mean_ends"] == pytest.approx(0.010)
    assert at("std", "test_error")["barrier_mean_ends"] == pytest.approx(0.005)
    assert at("mean", "test_nll")["barrier_linear"] == pytest.approx(0.5)
    assert at("std", "test_nll")["barrier_linear"] == pytest.approx(math.sqrt(0.13))
    assert bool(at("mean", "test_error")["stable"]) and pd.isna(at("std", "test_error")["stable"])
    assert pd.isna(at("mean", "test_nll")["stable"])
    assert at("mean", "test_error", "interpolated")["barrier_mean_ends"] == pytest.approx(0.10)
    assert at("std", "test_error", "interpolated")["barrier_mean_ends"] == pytest.approx(0.0)
    assert not at("mean", "test_error", "interpolated")["stable"]
    with pytest.raises(ValueError, match="one pair at least"):
        card_over_pairs({})


# --- every path between two networks, the cards over pairs ----------------------------------------------------


def test_measure_pair_aligned_ends_are_the_networks_with_their_own_statistics_and_one_network_has_no_barrier():
    data = small_data()
    a, b = endpoints(data)
    names = [n for n, _ in a.named_parameters()]
    params = {k: {n: v.detach() for n, v in net.named_parameters()} for k, net in (("a", a), ("b", b))}
    buffers = {k: buffers_of(net, net.state_dict()) for k, net in (("a", a), ("b", b))}
    batches, example = eval_batches(data, 16), data.test.x[:2].float()
    ts = [0.0, 0.5, 1.0]
    paths, alignment = measure_pair(
        lambda: bn_convnet(5), params["a"], params["b"], ts, batches,
        buffers=(buffers["a"], buffers["b"]), example=example,
    )  # fmt: skip
    assert list(paths) == ["segment", "aligned", "aligned_repair"] and alignment["hidden_units"] == 12
    assert set(paths["aligned"]) == {"recalibrated", "interpolated"} and set(paths["aligned_repair"]) == {
        "recalibrated"
    }
    # at t = 1 the aligned segment is π(θ_B) with its statistics permuted along: θ_B's own function, either way
    for bn in ("recalibrated", "interpolated"):
        seg, ali = paths["segment"][bn].iloc[-1], paths["aligned"][bn].iloc[-1]
        assert ali["test_error"] == seg["test_error"] and ali["test_nll"] == pytest.approx(seg["test_nll"], rel=1e-5)
    want = direct(naive_state(a, b, 1.0), data)  # B evaluated with its own running statistics
    assert paths["aligned"]["interpolated"]["test_nll"].iloc[-1] == pytest.approx(want["test_nll"], rel=1e-5)

    # one network at both ends: every path is that network, every barrier 0
    same, _ = measure_pair(
        lambda: bn_convnet(5), params["a"], params["a"], ts, batches,
        buffers=(buffers["a"], buffers["a"]), example=example,
    )  # fmt: skip
    card = path_cards({("a", "a"): same})
    each = card[card["pair"] == "a-a"]
    assert len(each) == 5 * (2 + 2 + 1) and set(each["path"]) == {"segment", "aligned", "aligned_repair"}
    assert each["barrier_mean_ends"].abs().max() < 1e-5 and each["barrier_linear"].abs().max() < 1e-5, each
    assert each[each["measure"].str.endswith("error")]["stable"].all()
    assert set(names) == set(params["a"])


def test_measure_pairs_is_measure_pair_for_each_pair_and_a_curve_joins_its_own_pair_only():
    data = small_data()
    a, b = endpoints(data)
    c = trained_statistics(bn_convnet(3), data, 2.0)
    states = {"a": a.state_dict(), "b": b.state_dict(), "c": c.state_dict()}
    weights, buffers = split_states(bn_convnet(5), states)
    assert set(weights["c"]) == {n for n, _ in c.named_parameters()} and "1.running_mean" in buffers["c"]
    assert weights["a"]["0.weight"] is states["a"]["0.weight"]  # the state dicts' own tensors
    assert split_states(nn.Linear(2, 3), {"x": nn.Linear(2, 3).state_dict()})[1] == {}  # no BatchNorm: no buffers
    batches, example, ts = eval_batches(data, 16), data.test.x[:2].float(), [0.0, 0.5, 1.0]
    said: list[str] = []
    measured, alignment = measure_pairs(
        lambda: bn_convnet(5), weights, ts, batches, buffers=buffers, example=example, seed=3, progress=said.append
    )
    assert list(measured) == pairs_of(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert list(alignment) == ["a-b", "a-c", "b-c"] and len(said) == pairs_points(3, 3, bn=True)
    for x, y in measured:  # each pair as measure_pair measures it alone
        paths, numbers = measure_pair(
            lambda: bn_convnet(5), weights[x], weights[y], ts, batches,
            buffers=(buffers[x], buffers[y]), example=example, seed=3,
        )  # fmt: skip
        assert numbers == alignment[f"{x}-{y}"] and list(paths) == list(measured[(x, y)])
        for path, by_bn in paths.items():
            for bn, rows in by_bn.items():
                pd.testing.assert_frame_equal(rows, measured[(x, y)][path][bn], check_exact=True)
    assert pairs_points(4, 11, bn=False, align=False, repair=False) == 6 * 11

    # the fitted curve of one pair is that pair's path "curve"; of a pair not measured, None
    curve = Curve(bn_convnet(6), weights["a"], weights["c"], "bezier", 3)
    rows = pd.DataFrame([{"path": p, "t": t, **{m: t for m in MEASURES}} for p in ("segment", "curve") for t in ts])
    assert curve_of_pair(measured, ("c", "a"), curve, rows, batches, buffers=buffers) is None
    added = curve_of_pair(measured, ("a", "c"), curve, rows, batches, buffers=buffers)
    assert list(added) == list(measured) and list(added[("a", "c")]) == [*measured[("a", "c")], "curve"]
    assert "curve" not in measured[("a", "c")], "measured is left as it was"
    curve_bn = added[("a", "c")]["curve"]
    assert set(curve_bn) == {"recalibrated", "interpolated"} and curve_bn["recalibrated"]["t"].tolist() == ts
    assert curve_bn["recalibrated"]["test_error"].tolist() == ts  # eval_curve's rows of the curve, as given
    assert added[("a", "b")] is measured[("a", "b")]


def test_cards_over_pairs_and_the_repair_effect_on_closed_forms():
    def rows(h: float) -> pd.DataFrame:  # test error 0.1 + h·4t(1 − t): every barrier h, worst 0.1 + h at t = ½
        return pd.DataFrame([{"t": t, **{m: 0.1 + h * 4 * t * (1 - t) for m in MEASURES}} for t in GRID])

    measured = {
        (0, 1): {"segment": {NO_BN: rows(0.8)}, "aligned": {NO_BN: rows(0.4)}, "aligned_repair": {NO_BN: rows(0.1)}},
        (0, 2): {"segment": {NO_BN: rows(0.6)}, "aligned": {NO_BN: rows(0.6)}, "aligned_repair": {NO_BN: rows(0.3)}},
        (1, 2): {"segment": {NO_BN: rows(0.7)}, "aligned": {NO_BN: rows(0.5)}, "aligned_repair": {NO_BN: rows(0.2)}},
    }
    measured[(0, 1)]["curve"] = {NO_BN: rows(0.01)}  # one pair only, as the fitted curve
    card = path_cards(measured)
    assert set(card["bn"]) == {NO_BN} and list(dict.fromkeys(card["path"])) == [*measured[(0, 1)]]
    mean = card[(card["pair"] == "mean") & (card["measure"] == "test_error")].set_index("path")
    assert mean.loc["segment", "barrier_mean_ends"] == pytest.approx(0.7)
    assert mean.loc["aligned", "worst"] == pytest.approx(0.6) and mean.loc["aligned", "worst_t"] == 0.5
    assert mean.loc["curve", "barrier_linear"] == pytest.approx(0.01) and bool(mean.loc["curve", "stable"])
    std = card[(card["pair"] == "std") & (card["measure"] == "test_error")].set_index("path")
    assert std.loc["aligned_repair", "barrier_mean_ends"] == pytest.approx(0.1) and math.isnan(
        std.loc["curve", "barrier_mean_ends"]
    )
    record = card_record(card, alignment={"0-1": {"moved_fraction": 0.5}})
    assert (
        record["bn"] is False
        and card_pairs(record) == ["0-1", "0-2", "1-2"]
        and set(record["card"]["mean"]) == set(PATHS)
    )
    effect = record["repair"]["test_error"]
    assert effect["none"] == pytest.approx(0.5) and effect["repair"] == pytest.approx(0.2) and "reset" not in effect
    assert effect["reduction"] == pytest.approx(0.6)
    assert repair_effect(record["card"], "train_loss")["reduction"] == pytest.approx(0.6)
    text = "\n".join(barrier_card_lines(record))  # the report's card: mean ± std, then each pair's own barrier
    assert "| segment | none | 80.00% ± 10.00% |" in text and "| 0-1 | 0-2 | 1-2 |" in text
    assert (
        "| segment | none | 80.00% ✗ | 60.00% ✗ | 70.00% ✗ |" in text and "| curve | none | 1.00% ✓ | — | — |" in text
    )
    long = along_t_rows(measured)
    assert len(long) == (3 * 3 + 1) * len(GRID) and list(long.columns[:4]) == ["pair", "path", "bn", "t"]
    wide = along_t_mean(long)
    assert wide["segment_none_test_error"].tolist() == pytest.approx([0.1 + 0.7 * 4 * t * (1 - t) for t in GRID])
