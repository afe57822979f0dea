"""Stage headline: the few numbers people compare across experiments, picked from a pipeline's stage files.

`dvc exp show` and `dvc metrics diff` list every number of every file declared `metrics:` in every dvc.yaml of
the repository, so each pipeline declares one small headline file and nothing else; each stage's own JSON (every
summary along t, every budget, every seed) is a plain output that the report and the tests read. The root
pipeline's headline is the report's (metrics/headline.json); this stage writes the headline of a pipeline
without a report: own/ (the curve between your checkpoints and FGE from yours) and the width experiment (per
width factor K). Each option names one stage's file; the headline has a section for each file given, its numbers
chosen by modeconn.report (curve_headline, fge_headline, width_headline, barriers_headline, simplex_headline).
"""

from __future__ import annotations

from pathlib import Path

import typer

from modeconn.errors import ConfigError
from modeconn.report import barriers_headline, curve_headline, fge_headline, simplex_headline, width_headline

from .kit.cli import console, stage_app
from .kit.records import read_json, write_json


def main(
    out: Path = typer.Option(..., "--out", help="The headline metrics file to write."),
    curve: Path | None = typer.Option(None, "--curve", help="eval_curve's metrics file."),
    fge: Path | None = typer.Option(None, "--fge", help="The fge stage's metrics file."),
    width: Path | None = typer.Option(None, "--width", help="The width experiment's summary (its metrics file)."),
    barriers: Path | None = typer.Option(None, "--barriers", help="The barriers stage's metrics file."),
    simplex: Path | None = typer.Option(None, "--simplex", help="A simplex stage's metrics file."),
) -> None:
    """Write the headline metrics of a pipeline from its stages' files."""
    numbers: dict = {}
    for path, stage, pick in (
        (curve, "eval_curve", curve_headline),
        (fge, "fge", fge_headline),
        (width, "summary", width_headline),
        (barriers, "barriers", barriers_headline),
        (simplex, "simplex", lambda s: simplex_headline({0: s}, {})),
    ):
        if path is not None:
            numbers.update(pick(read_json(path, f"Run `dvc repro {stage}` first.")))
    if not numbers:
        raise ConfigError("stages.headline: give at least one of --curve, --fge, --width, --barriers, --simplex")
    write_json(out, numbers)
    count = sum(len(v) if isinstance(v, dict) else 1 for v in numbers.values())
    console.print(f"headline: {count} numbers → {out}")


app = stage_app(main)

if __name__ == "__main__":
    app()
