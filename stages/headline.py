"""Stage headline: the few numbers people compare across experiments, picked from a pipeline's stage files.

`dvc exp show` and `dvc metrics diff` list every number of every file declared `metrics:` in every dvc.yaml of
the repository, so each pipeline declares one small headline file and nothing else; each stage's own JSON (every
summary along t, every budget, every seed) is a plain output that the report and the tests read. The root
pipeline's headline is the report's (metrics/headline.json); this stage writes the headline of a pipeline
without a report: own/ (the curve between your checkpoints and FGE from yours) and the width experiment (per
width factor K). Each option names one stage's file; the headline has a section for each file given.
"""

from __future__ import annotations

from pathlib import Path

import typer

from modeconn.errors import ConfigError

from .kit.cli import console, stage_app
from .kit.records import read_json, write_json


def curve_numbers(curve: dict) -> dict:
    """eval_curve's file: the worst test error along the curve, the segment and the aligned segment, the length
    ratio (named as in the root's headline), the curve's barriers (its worst value above the straight line
    between its ends), and the accuracy of the ensemble along the curve against that of the two endpoints."""
    out = {
        "curve_max_test_error": curve["curve"]["test_error"]["max"],
        "segment_max_test_error": curve["segment"]["test_error"]["max"],
    }
    if "aligned" in curve:
        out["aligned_max_test_error"] = curve["aligned"]["test_error"]["max"]
    barrier, ens = curve["barrier"]["curve"], curve["ensemble"]
    out["length_ratio"] = curve["length"]["ratio"]
    out["curve_barrier"] = {"test_error": barrier["test_error"], "train_loss": barrier["train_loss"]}
    out["ensemble_accuracy"] = {"curve": ens["curve"]["accuracy"], "endpoints": ens["endpoints"]["accuracy"]}
    return out


FGE_KEYS = ("start_accuracy", "ensemble_accuracy", "start_nll", "ensemble_nll")


def fge_numbers(fge: dict) -> dict:
    """The fge stage's file: the ensemble's test accuracy and NLL, beside the start network's (measured before any
    FGE step) where it was measured."""
    return {"fge": {k: fge[k] for k in FGE_KEYS if k in fge}}


WIDTH_KEYS = ("length_ratio", "train_loss_barrier", "test_error_barrier")


def width_numbers(width: dict) -> dict:
    """The width summary: per width factor K (``k<K>``), the curve's length ratio and its barriers."""
    return {k: {key: row[key] for key in WIDTH_KEYS} for k, row in width.items() if k.startswith("k")}


def main(
    out: Path = typer.Option(..., "--out", help="The headline metrics file to write."),
    curve: Path | None = typer.Option(None, "--curve", help="eval_curve's metrics file."),
    fge: Path | None = typer.Option(None, "--fge", help="The fge stage's metrics file."),
    width: Path | None = typer.Option(None, "--width", help="The width experiment's summary (its metrics file)."),
) -> None:
    """Write the headline metrics of a pipeline from its stages' files."""
    numbers: dict = {}
    for path, stage, pick in (
        (curve, "eval_curve", curve_numbers),
        (fge, "fge", fge_numbers),
        (width, "summary", width_numbers),
    ):
        if path is not None:
            numbers.update(pick(read_json(path, f"Run `dvc repro {stage}` first.")))
    if not numbers:
        raise ConfigError("stages.headline: give at least one of --curve, --fge, --width")
    write_json(out, numbers)
    count = sum(len(v) if isinstance(v, dict) else 1 for v in numbers.values())
    console.print(f"headline: {count} numbers → {out}")


app = stage_app(main)

if __name__ == "__main__":
    app()
