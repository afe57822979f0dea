"""The barriers stage through its CLI on the tiny workspace (a ConvFC with BatchNorm: both BN treatments), on
checkpoints of one's own without BatchNorm (one treatment, ``none``), and its errors for people."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from modeconn.barriers import card_pairs
from modeconn.io import save_checkpoint
from modeconn.models import from_spec, model_spec
from stages import barriers, report

from .stage_utils import invoke, tiny_params, write_params

PATHS = {"segment", "aligned", "aligned_repair", "curve"}


def test_the_card_of_every_path_with_both_bn_treatments_and_the_report(tiny_workspace):
    m = tiny_workspace / "metrics"
    card = pd.read_csv(m / "barriers.csv")
    assert set(card["path"]) == PATHS and set(card["pair"]) == {"0-1", "mean", "std"}
    by = card.set_index(["path", "pair", "bn", "measure"])
    for path in ("segment", "aligned", "curve"):  # BatchNorm: recalibrated and interpolated statistics
        assert {"recalibrated", "interpolated"} <= set(card[card["path"] == path]["bn"]), path
    assert set(card[card["path"] == "aligned_repair"]["bn"]) == {"recalibrated"}
    assert set(card.columns) >= {"worst", "worst_t", "barrier_mean_ends", "barrier_linear", "stable"}

    # The curve's card reads eval_curve's rows (BN recalibrated): its worst test error is theirs.
    rows = pd.read_csv(m / "curve_eval.csv")
    curve = rows[rows["path"] == "curve"]
    assert by.loc[("curve", "0-1", "recalibrated", "test_error"), "worst"] == pytest.approx(curve["test_error"].max())
    # Frankle et al.'s verdict is the error barrier below 2%, given for errors only.
    err = by.loc[("segment", "0-1", "recalibrated", "test_error")]
    assert bool(err["stable"]) == (err["barrier_mean_ends"] < 0.02)
    assert pd.isna(by.loc[("segment", "0-1", "recalibrated", "train_loss"), "stable"])

    # Every path starts at θ_A; the aligned segment ends at π(θ_B), the same function as θ_B.
    along = pd.read_csv(m / "barriers_along_t.csv")
    ends = along[along["bn"] == "recalibrated"].groupby("path")
    first, last = ends.first(), ends.last()
    for at in (first, last):  # (the curve's rows are eval_curve's, recalibrated on eval.bn_samples images)
        assert at.loc["aligned", "test_error"] == pytest.approx(at.loc["segment", "test_error"])
        assert at.loc["aligned", "test_nll"] == pytest.approx(at.loc["segment", "test_nll"], rel=1e-4)
    wide = pd.read_csv(m / "barriers_mean_along_t.csv")
    assert "aligned_repair_recalibrated_test_error" in wide.columns and wide["t"].is_monotonic_increasing

    s = json.loads((m / "barriers.json").read_text())
    assert s["bn"] is True and card_pairs(s) == ["0-1"] and set(s["card"]["mean"]) == PATHS
    rep = s["repair"]["test_error"]
    assert rep["none"] == s["card"]["mean"]["aligned"]["interpolated"]["test_error"]["barrier_mean_ends"]
    assert rep["reset"] == s["card"]["mean"]["aligned"]["recalibrated"]["test_error"]["barrier_mean_ends"]
    assert rep["repair"] == s["card"]["mean"]["aligned_repair"]["recalibrated"]["test_error"]["barrier_mean_ends"]
    run = json.loads((m / "barriers.run.json").read_text())
    assert run["num_points"] == 3 and run["bn_samples"] == 96 and run["seconds"] > 0

    text = (m / "report.md").read_text()
    assert "## Barrier card" in text and "| aligned + REPAIR | recalibrated |" in text and "REPAIR (Jordan" in text
    head = json.loads((m / "headline.json").read_text())["barriers"]
    assert head == {
        "segment_test_error": s["card"]["mean"]["segment"]["recalibrated"]["test_error"]["barrier_mean_ends"],
        "aligned_test_error": rep["reset"],
        "aligned_repair_test_error": rep["repair"],
        "aligned_bn_interpolated_test_error": rep["none"],
    }


def test_own_checkpoints_without_batchnorm_have_one_treatment_and_a_headline(tiny_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = model_spec("convfc", 4, 1, 28, {"width": 4, "fc_width": 8})
    files = []
    for seed in range(3):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / f"net{seed}.pt", spec, from_spec(spec).state_dict())
        files.append(f"net{seed}.pt")
    params = tiny_params(barriers__files=files, barriers__num_points=2, barriers__repair=False)
    write_params(tmp_path, params)
    args = ("--prepared", tiny_workspace / "data/prepared", "--device", "cpu")
    outs = ("--metrics", "b.json", "--table", "b.csv", "--along", "a.csv", "--wide", "w.csv")
    r = invoke(barriers, *args, *outs, "--markdown", "b.md", "--headline", "h.json")
    assert r.exit_code == 0, r.output
    card = pd.read_csv(tmp_path / "b.csv")
    assert set(card["bn"]) == {"none"} and set(card["path"]) == {"segment", "aligned"}
    assert set(card["pair"]) == {"net0.pt-net1.pt", "net0.pt-net2.pt", "net1.pt-net2.pt", "mean", "std"}
    mean = card[(card["pair"] == "mean") & (card["measure"] == "test_error")].set_index("path")
    each = card[~card["pair"].isin(["mean", "std"]) & (card["measure"] == "test_error")]
    for path, rows in each.groupby("path"):  # the mean and the sample std over the three pairs
        assert mean.loc[path, "barrier_linear"] == pytest.approx(rows["barrier_linear"].mean())
    assert "no BatchNorm" in (tmp_path / "b.md").read_text()
    head = json.loads((tmp_path / "h.json").read_text())["barriers"]
    assert head["aligned_repair_test_error"] is None and head["segment_test_error"] >= 0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"barriers__num_points": 1}, "barriers.num_points must be at least 2"),
        ({"barriers__align": False}, "barriers.repair needs barriers.align: true"),
        ({"barriers__threshold": 2}, "barriers.threshold must be an error fraction"),
        ({"barriers__files": ["a.pt"]}, "barriers.files must name two or more"),
        ({"barriers__files": ["a.pt", "b.pt"]}, "barriers.files: a.pt not found"),
        ({"train__seeds": [0]}, "train.seeds lists one seed"),
        ({"train__seeds": [0, 7]}, "no endpoint of seed 7"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(tiny_workspace, tmp_path, monkeypatch, changes, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(**changes))
    ws = tiny_workspace
    r = invoke(barriers, "--prepared", ws / "data/prepared", "--endpoints", ws / "data/endpoints", "--device", "cpu")
    assert r.exit_code == 1 and message in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "metrics").exists()


def test_the_report_embeds_the_bn_experiment_when_present(tiny_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_workspace)
    (tmp_path / "barriers.md").write_text("## Barrier card: every path\n\n| path |\n|---|\n")
    out = tmp_path / "report.md"
    r = invoke(report, "--out", out, "--headline", tmp_path / "h.json", "--bn", tmp_path)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "## With BatchNorm: REPAIR, reset and interpolated statistics" in text and "### Barrier card" in text
