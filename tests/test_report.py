"""The report stage on a whole tiny run: every file it claims to read is linked, every link exists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from stages import compare, eval_curve, fge, fit_curve, path_ensembles, plane, prepare, report, sse, train_endpoint

from .stage_utils import build_workspace, invoke, tiny_params, write_params

FIGURES = (
    "curve_along_t.png",
    "compare.png",
    "plane_train_loss.png",
    "plane_test_error.png",
    "path_ensembles.png",
    "reliability.png",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every stage of the pipeline on the tiny config, in the order of dvc.yaml."""
    root = tmp_path_factory.mktemp("report_ws")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    build_workspace(
        root,
        [
            (prepare,),
            (train_endpoint, "--seed", 0),
            (train_endpoint, "--seed", 1),
            (fit_curve,),
            (eval_curve,),
            (fge,),
            (sse,),
            (plane,),
            (path_ensembles,),
            (compare,),
            (report,),
        ],
    )
    yield root
    mp.undo()


def test_report_links_every_source_and_each_link_exists(run):
    md = run / "metrics/report.md"
    text = md.read_text()
    targets = report.links(text)
    assert targets, "the report links nothing"
    for target in targets:
        assert not Path(target).is_absolute() and (md.parent / target).is_file(), f"broken link {target}"
    sources = report.sources(Path("metrics"), tiny_params()["train"]["seeds"])
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
