"""Expected calibration error and reliability bins against a hand computation and against torchmetrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from modeconn import calibration, ensemble
from modeconn.plots import reliability_diagrams


def lp(rows):
    return torch.tensor(rows, dtype=torch.float64).log().float()


# conf 0.9 right, 0.75 wrong, 0.65 right, 0.35 wrong
HAND = lp([[0.9, 0.05, 0.05], [0.75, 0.15, 0.10], [0.2, 0.65, 0.15], [0.35, 0.33, 0.32]])
HAND_Y = torch.tensor([0, 2, 1, 1])


def test_ece_by_hand_five_bins():
    # bins of width 0.2: (0.8, 1] holds 0.9 (acc 1, conf 0.9); (0.6, 0.8] holds 0.75 and 0.65 (acc 0.5,
    # conf 0.7); (0.2, 0.4] holds 0.35 (acc 0). ECE = (1·0.1 + 2·0.2 + 1·0.35) / 4.
    assert calibration.ece(HAND, HAND_Y, bins=5) == pytest.approx(0.85 / 4, abs=1e-6)
    rel = calibration.reliability(HAND, HAND_Y, bins=5)
    assert rel.count.tolist() == [0, 1, 0, 2, 1]
    assert rel.accuracy.tolist() == pytest.approx([0, 0, 0, 0.5, 1])
    assert rel.confidence.tolist() == pytest.approx([0, 0.35, 0, 0.7, 0.9], abs=1e-6)
    rows = rel.rows()
    assert [r["count"] for r in rows] == [0, 1, 0, 2, 1] and rows[3]["lo"] == pytest.approx(0.6)


def test_ece_by_hand_fifteen_bins():
    # With 15 bins every prediction has its own bin: ECE = mean |correct − conf|.
    assert calibration.BINS == 15
    assert calibration.ece(HAND, HAND_Y) == pytest.approx((0.1 + 0.75 + 0.35 + 0.35) / 4, abs=1e-6)
    assert calibration.reliability(HAND, HAND_Y).count.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 0]


def test_calibrated_bin_has_zero_error():
    # Ten predictions at confidence 0.7, seven of them right: acc = conf in the only non-empty bin.
    x = lp([[0.7, 0.3]] * 10)
    y = torch.tensor([0] * 7 + [1] * 3)
    assert calibration.ece(x, y) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bins", [15, 10, 1])
@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0])
def test_ece_matches_torchmetrics(bins, scale):
    g = torch.Generator().manual_seed(int(10 * scale) + bins)
    K, N = 10, 3000
    logits = scale * torch.randn(N, K, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    y[: N // 2] = logits[: N // 2].argmax(1)  # half right by construction, so the bins are not all chance
    logprobs = F.log_softmax(logits, 1)
    reference = MulticlassCalibrationError(num_classes=K, n_bins=bins, norm="l1")(logprobs.exp(), y).item()
    assert calibration.ece(logprobs, y, bins=bins) == pytest.approx(reference, abs=1e-5)


def test_temperature_scaling_lowers_ece_of_overconfident_predictions():
    # Labels drawn from softmax(z) are calibrated for z; the logits 3z are over-confident. Temperature
    # scaling fitted on held-out draws brings the ECE back near that of z.
    g = torch.Generator().manual_seed(0)
    z = 1.5 * torch.randn(8000, 5, generator=g)
    y = torch.multinomial(F.softmax(z, 1), 1, generator=g).squeeze(1)
    over = F.log_softmax(3 * z, 1)
    fit, test = slice(0, 4000), slice(4000, None)
    temp = ensemble.fit_temperature(over[fit], y[fit])
    before = calibration.ece(over[test], y[test])
    after = calibration.ece(ensemble.scale(over[test], temp), y[test])
    calibrated = calibration.ece(F.log_softmax(z[test], 1), y[test])  # the sampling noise of a true model
    assert temp == pytest.approx(3.0, rel=0.05)
    assert before > 0.2 and after < calibrated + 0.01 and after < before / 5, (before, after, calibrated)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="bins"):
        calibration.ece(HAND, HAND_Y, bins=0)
    with pytest.raises(ValueError, match="logprobs"):
        calibration.ece(HAND, HAND_Y[:2])


def test_probabilities_or_logits_in_place_of_log_probabilities_are_an_error():
    """Probabilities used to give an impossible ECE (> 1) without a word; logits likewise."""
    probs = HAND.exp()
    for wrong in (probs, torch.randn(4, 3) + 3):
        with pytest.raises(ValueError, match=r"not log-probabilities.*torch\.log_softmax\(logits, 1\)"):
            calibration.ece(wrong, HAND_Y)
        with pytest.raises(ValueError, match="not log-probabilities"):
            calibration.reliability(wrong, HAND_Y)
    # float rounding just above 0 (e.g. log of an averaged ensemble) is still log-probabilities
    near = torch.tensor([[1e-6, -20.0, -20.0], [-20.0, 5e-5, -20.0]])
    assert calibration.ece(near, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_outside_the_classes_are_an_error(bad):
    y = HAND_Y.clone()
    y[1] = bad
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\)"):
        calibration.ece(HAND, y)


def test_reliability_diagrams_write_a_png(tmp_path):
    rel = calibration.reliability(HAND, HAND_Y)
    path = tmp_path / "reliability.png"
    reliability_diagrams({"Ind": rel, "FGE": calibration.reliability(HAND.flip(0), HAND_Y)}, path, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one"):
        reliability_diagrams({}, tmp_path / "none.png")


def test_curve_ensembles_report_the_ece_of_each_ensemble_before_and_after_scaling():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (500,), generator=g)
    curve = [F.log_softmax(3 * torch.randn(500, 4, generator=g), 1) for _ in range(5)]
    segment = [F.log_softmax(torch.randn(500, 4, generator=g), 1) for _ in range(5)]
    temps = [1.0, 2.0, 0.5, 3.0, 1.5]
    out = ensemble.curve_ensembles(curve, segment, y, temperatures=temps)
    assert out["curve"]["ece"] == pytest.approx(calibration.ece(ensemble.combine(curve), y))
    assert out["segment"]["ece"] == pytest.approx(calibration.ece(ensemble.combine(segment), y))
    assert out["endpoints"]["ece"] == pytest.approx(calibration.ece(ensemble.combine([curve[0], curve[-1]]), y))
    scaled = [ensemble.scale(c, t) for c, t in zip(curve, temps)]
    assert out["curve_scaled"]["ece"] == pytest.approx(calibration.ece(ensemble.combine(scaled), y))
    assert out["endpoints_scaled"]["ece"] == pytest.approx(
        calibration.ece(ensemble.combine([scaled[0], scaled[-1]]), y)
    )
    assert out["curve_scaled"]["ece"] != pytest.approx(out["curve"]["ece"])


def test_bins_are_closed_on_the_right_where_torchmetrics_closes_them_on_the_left():
    # Confidences exactly on the inner edge 0.75 of 4 bins (exact in float64): modeconn puts them in
    # (0.5, 0.75] (Guo et al.'s I_m = ((m−1)/M, m/M]), torchmetrics in [0.75, 1).
    # Here: 0.75 right, 0.75 wrong, 0.625 right, 0.875 wrong.
    x = torch.tensor([[0.75, 0.25], [0.75, 0.25], [0.625, 0.375], [0.875, 0.125]], dtype=torch.float64).log()
    y = torch.tensor([0, 1, 0, 1])
    assert x.exp().max(1).values.tolist() == [0.75, 0.75, 0.625, 0.875]  # the edge is hit, not missed by rounding
    rel = calibration.reliability(x, y, bins=4)
    assert rel.count.tolist() == [0, 0, 3, 1]
    # (0.5, 0.75]: acc 2/3, conf 0.7083 → 3·0.04167; (0.75, 1]: acc 0, conf 0.875. ECE = (0.125 + 0.875) / 4
    assert rel.ece == pytest.approx(0.25, abs=1e-12)
    # torchmetrics: [0.5, 0.75) holds 0.625 alone (gap 0.375); [0.75, 1] the other three (gap 1.375 / 3 each).
    reference = MulticlassCalibrationError(num_classes=2, n_bins=4, norm="l1")(x.exp().float(), y).item()
    assert reference == pytest.approx((0.375 + 1.375) / 4, abs=1e-6)
