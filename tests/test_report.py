"""The report stage on a whole tiny run: every file it claims to read is linked, every link exists."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

from modeconn import claims
from modeconn import report as library
from modeconn.report import Embedded, Results
from stages import report
from stages.kit.layout import report_sources

from .stage_utils import invoke, tiny_params, write_params

FIGURES = (
    "curve_along_t.png",
    "compare.png",
    "plane_train_loss.png",
    "plane_test_error.png",
    "path_ensembles.png",
    "reliability.png",
)


def results(**changes) -> Results:
    """A run's records with only the keys that the headline and the verdicts read."""
    seeds = {0: {"test_accuracy": 0.90}, 1: {"test_accuracy": 0.92}}
    curve = {
        "curve": {"test_error": {"max": 0.11, "start": 0.10, "end": 0.095}},
        "segment": {"test_error": {"max": 0.50}},
        "length": {"ratio": 1.3},
        "ensemble": {"curve": {"accuracy": 0.91, "nll": 0.30}, "endpoints": {"accuracy": 0.90, "nll": 0.31}},
    }
    compare = {
        "1B": {
            "ind": {"members": 1, "test_error": 0.10},
            "fge": {"members": 4, "test_error": 0.095},
            "sse": {"members": 2, "test_error": 0.11},
        },
        "1B_over_seeds": {
            "ind": {"n": 2, "mean_accuracy": 0.90, "std_accuracy": 0.002},
            "fge": {"n": 2, "mean_accuracy": 0.905, "std_accuracy": 0.001},
        },
    }
    fields = {f.name: {} for f in dataclasses.fields(Results)}
    fields.update(
        endpoints=seeds,
        curve=curve,
        path_ensembles={"by_t": {"t=0.50": {"curve_error": 0.09, "segment_error": 0.10, "random_error": 0.11}}},
        fge={"mean_distance": 1.0},
        fge_run={"snapshots_per_run": {"0": 4, "1": 4}, "cycle": 1, "epochs": 4},
        sse={"mean_distance": 3.0},
        compare=compare,
        compare_table="",
    )
    return Results(**{**fields, **changes})


def test_headline_numbers():
    head = library.headline(results())
    assert head["endpoint_accuracy"] == pytest.approx({"mean": 0.91, "std": statistics.stdev([0.90, 0.92])})
    assert (head["curve_max_test_error"], head["segment_max_test_error"], head["length_ratio"]) == (0.11, 0.5, 1.3)
    assert head["test_error_1B"] == {"ind": 0.10, "fge": 0.095, "sse": 0.11} and head["val_error_1B"] == {}


def test_verdicts_at_1B_compare_the_means_over_seeds():
    verdicts = {v.claim: v for v in library.verdicts(results())}
    assert all(v.outcome == claims.SHOWN for v in verdicts.values()), verdicts
    ind = verdicts["Sec. 5, Table 1: FGE beats Ind at 1B"]
    assert "9.50% against 10.00% (FGE: mean over 2 runs, Ind over 2 seeds) (seed spread 0.20 points)" in ind.evidence
    assert (
        "(FGE: mean over 2 runs, SSE one run) (seed spread 0.10 points)"
        in verdicts["Sec. 5, Table 1: FGE beats SSE at 1B"].evidence
    )
    assert "Sec. 4: temperature scaling improves the curve ensemble (test NLL)" not in verdicts  # no scaled ensemble


def test_fge_runs_of_one_snapshot_are_not_tested():
    one = results(fge_run={"snapshots_per_run": [1, 1], "cycle": 4, "epochs": 2})  # a list or a mapping by position
    untested = [v for v in library.verdicts(one) if v.outcome == claims.NOT_TESTED]
    assert [v.claim for v in untested] == [
        "Sec. 5, Table 1: FGE beats Ind at 1B",
        "Sec. 5, Table 1: FGE beats SSE at 1B",
        "Sec. 5: consecutive FGE snapshots lie closer together than SSE's",
    ]
    assert (
        untested[0].evidence
        == "each FGE run took 1 snapshot(s) (fge.cycle 4 in fge.epochs 2): no FGE ensemble to compare"
    )


def test_sections_of_links_warnings_width_and_sources():
    assert library.links("[a](x.json) ![b](y.png) [c](x.json) [no link] (z)") == ["x.json", "y.png"]
    runs = {"fge": {"warnings": {"0": "one snapshot"}}, "sse": {}, "compare": {"warnings": ["w1", "w2"]}}
    assert library.warnings_section(runs)[4:7] == ["- `fge`: one snapshot", "- `compare`: w1", "- `compare`: w2"]
    assert library.warnings_section({"sse": {}}) == []
    assert library.width_section(None) == []
    width = "\n".join(library.width_section(Embedded("| K |\n|---|\n", "w/width.md", "w/width.png")))
    assert "## Width of the network (Sec. 4, Fig. 3)" in width and "| K |\n|---|\n\n![" in width
    assert library.links(width) == ["w/width.md", "w/width.png"]
    assert library.sources_section([("a.json", "m/a.json", "fge")])[-1] == "- [a.json](m/a.json) (stage `fge`)"


@pytest.fixture
def run(tiny_workspace, monkeypatch):
    """The session's tiny workspace (conftest: every stage of the pipeline on the tiny config), as the working
    directory."""
    monkeypatch.chdir(tiny_workspace)
    return tiny_workspace


def test_report_links_every_source_and_each_link_exists(run):
    md = run / "metrics/report.md"
    text = md.read_text()
    targets = library.links(text)
    assert targets, "the report links nothing"
    for target in targets:
        assert not Path(target).is_absolute() and (md.parent / target).is_file(), f"broken link {target}"
    sources = report_sources(Path("metrics"), tiny_params()["train"]["seeds"])
    linked = {(md.parent / t).resolve() for t in targets}
    for path, stage in sources.items():
        assert (run / path).resolve() in linked, f"{path} (from {stage}) is read but not listed"
    for png in FIGURES:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(png)}\)", text), f"{png} not embedded as an image"
    for section in (
        "## What ran",
        "## Endpoints",
        "## Curve against segment",
        "## The plane",
        "## Ensembles of an endpoint",
        "## Ensembles at equal budgets",
        "## Sources",
    ):
        assert section in text, section
    assert "±" in text and "| FGE |" in text and "synthetic" in text and "cpu" in text
    assert "| SWA (FGE snapshots averaged) |" in text and "ECE %" in text and "SWA: each FGE run" in text
    start = json.loads((run / "metrics/fge.json").read_text())["start_accuracy"]  # FGE's start networks
    assert f"FGE's start networks, before any FGE step: test accuracy {100 * start:.2f}%" in text


def test_report_names_a_missing_file_and_its_stage(run, tmp_path, monkeypatch):
    shutil.copytree(run / "metrics", tmp_path / "metrics")
    (tmp_path / "metrics/plane.json").unlink()
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    r = invoke(report)
    assert r.exit_code == 1
    assert "metrics/plane.json" in r.output and "dvc repro plane" in r.output and "Traceback" not in r.output


def test_what_ran_lists_the_curve_on_a_line_of_its_own(run):
    text = (run / "metrics/report.md").read_text()
    assert "standard schedule.\n- Curve: " in text


def _report_of(run, tmp_path, monkeypatch, edit):
    """The report of ``run``'s metrics after ``edit(metrics folder)``."""
    shutil.copytree(run / "metrics", tmp_path / "metrics")
    edit(tmp_path / "metrics")
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    r = invoke(report)
    assert r.exit_code == 0, r.output
    return (tmp_path / "metrics/report.md").read_text()


def _claim_row(text: str, claim: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| {claim}")]
    assert len(rows) == 1, f"no single row for {claim!r}"
    return rows[0]


def test_the_verdicts_are_drawn_from_the_run_they_report(run, tmp_path, monkeypatch):
    text = (run / "metrics/report.md").read_text()
    assert "## The paper's claims in this run" in text
    connects = "Sec. 3: the curve joins"
    cur = json.loads((run / "metrics/curve.json").read_text())
    worst = cur["curve"]["test_error"]["max"]
    assert f"worst test error along the curve {100 * worst:.2f}%" in _claim_row(text, connects)
    for claim in (
        "Sec. 4: an ensemble",
        "Fig. 4:",
        "Sec. 5, Table 1: FGE beats Ind at 1B",
        "Sec. 5, Table 1: FGE beats SSE at 1B",
        "Sec. 5: consecutive",
    ):
        assert "**" in _claim_row(text, claim)

    def raise_the_curve(metrics):  # the same run, but with a curve whose worst point is at chance
        c = json.loads((metrics / "curve.json").read_text())
        c["curve"]["test_error"]["max"] = 0.9
        (metrics / "curve.json").write_text(json.dumps(c))

    row = _claim_row(_report_of(run, tmp_path, monkeypatch, raise_the_curve), connects)
    assert "90.00%" in row and row.endswith("**not shown** |")


def test_the_warnings_of_the_stages_are_in_the_report(run, tmp_path, monkeypatch):
    assert "## Warnings" not in (run / "metrics/report.md").read_text()  # the tiny run's settings are sound

    def one_snapshot(metrics):  # what fge records when fge.cycle leaves one snapshot per run
        info = json.loads((metrics / "fge.run.json").read_text())
        info["warnings"] = {"0": "fge.cycle = 4 with fge.epochs = 2 takes 1 snapshot per run"}
        info["snapshots_per_run"] = {k: 1 for k in info["snapshots_per_run"]}
        (metrics / "fge.run.json").write_text(json.dumps(info))

    text = _report_of(run, tmp_path, monkeypatch, one_snapshot)
    assert "## Warnings" in text and "- `fge`: fge.cycle = 4 with fge.epochs = 2 takes 1 snapshot per run" in text
    # and no verdict on FGE's ensembles, which are one network each here
    for claim in ("Sec. 5, Table 1: FGE beats Ind at 1B", "Sec. 5: consecutive"):
        row = _claim_row(text, claim)
        assert row.endswith("**not tested** |") and "each FGE run took 1 snapshot(s)" in row, row


def test_a_resumed_stage_is_named_in_what_ran(run, tmp_path, monkeypatch):
    assert "Resumed after a stop" not in (run / "metrics/report.md").read_text()

    def resumed(metrics):
        info = json.loads((metrics / "endpoints/seed_0.run.json").read_text())
        info["resumed_after_epoch"] = 1
        (metrics / "endpoints/seed_0.run.json").write_text(json.dumps(info))

    text = _report_of(run, tmp_path, monkeypatch, resumed)
    assert "- Resumed after a stop: `train_endpoint@0` after epoch 1" in text
