"""Stage report: metrics/report.md, the run's results in one page (modeconn.report), and metrics/headline.json.

Every file it reads is a dependency (stages.kit.layout.report_sources): a missing one is an error naming the file
and the stage that writes it. The width, BN and instability experiments' summaries are embedded when their own
pipelines have made them; they are not dependencies, or `dvc repro` would run those experiments too.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from modeconn import report
from modeconn.errors import CheckpointError
from modeconn.io import atomic_write_text

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import read_params, read_sections
from .kit.layout import EMBEDDED, METRICS, REPORT_SOURCES, endpoint_metrics, report_sources, simplex_sources
from .kit.records import read_json, run_info_path, write_json


def check_sources(files: dict[Path, str]) -> None:
    missing = [(p, s) for p, s in files.items() if not p.is_file()]
    if missing:
        path, stage = missing[0]
        more = (
            f" (and {len(missing) - 1} more: {', '.join(str(p) for p, _ in missing[1:4])}…)" if len(missing) > 1 else ""
        )
        raise CheckpointError(
            f"{path} not found{more}: the report needs it. Run `dvc repro {stage}` (or `dvc repro` for everything)."
        )


def load(path: Path, stage: str) -> tuple[dict, dict]:
    """A metrics file and its run information."""
    hint = f"Rerun `dvc repro {stage}`."
    return read_json(path, hint), read_json(run_info_path(path), hint)


def read_results(metrics: Path, seeds: list[int], simplex_seeds: tuple[int, ...] = ()) -> report.Results:
    """The records of the run in ``metrics``: each stage's metrics and run information, by stage."""
    simplex = {
        st: read_json(p, f"Rerun `dvc repro {st}`.") for p, st in simplex_sources(metrics, simplex_seeds).items()
    }
    ends = {s: load(endpoint_metrics(metrics / "endpoints", s), f"train_endpoint@{s}") for s in seeds}
    by = {stage: load(metrics / name, stage) for name, stage in REPORT_SOURCES.items() if name.endswith(".json")}
    runs = {**{f"train_endpoint@{s}": r for s, (_, r) in ends.items()}, **{s: r for s, (_, r) in by.items()}}
    pairs = (by[stage] for stage in ("eval_curve", "path_ensembles", "plane", "fge", "sse", "compare"))
    return report.Results(  # each stage's metrics, then its run information, in the order of Results' fields
        {s: m for s, (m, _) in ends.items()},
        {s: r for s, (_, r) in ends.items()},
        by["fit_curve"][1],
        *(record for pair in pairs for record in pair),
        compare_table=(metrics / "compare.md").read_text(),
        runs=runs,
        plane_points=by["plane_points"][0],
        plane_points_run=by["plane_points"][1],
        barriers=by["barriers"][0],
        curvature=by["curvature"][0],
        simplexes={s: simplex[f"simplex@{s}"] for s in simplex_seeds},
        triangle=simplex.get("triangle", {}),
    )


def build(metrics: Path, out: Path, seeds: list[int], *folders: Path | None, simplex_seeds: tuple[int, ...] = ()):
    """The report's Markdown (links relative to ``out``'s folder) and the headline metrics; ``folders``: where
    the experiments of ``EMBEDDED`` keep their summaries, in its order (None: not embedded)."""
    files = {**report_sources(metrics, seeds), **simplex_sources(metrics, simplex_seeds, run_info=True)}
    check_sources(files)

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path, out.parent)).as_posix()

    results = read_results(metrics, seeds, simplex_seeds)
    figures = {name: rel(metrics / f"{name}.png") for name in report.FIGURES}
    sources = [(path.relative_to(metrics).as_posix(), rel(path), stage) for path, stage in files.items()]
    embedded = {}
    for name, folder in zip(EMBEDDED, folders):
        if folder is not None and all((folder / f).is_file() for f in EMBEDDED[name]):
            md, *png = (folder / f for f in EMBEDDED[name])
            embedded[name] = report.Embedded(md.read_text(), rel(md), rel(png[0]) if png else "")
    text = report.markdown(results, figures, sources, **embedded)
    return text, report.headline(results)


def main(
    params: Path = ParamsOpt,
    metrics: Path = typer.Option(METRICS, "--metrics", help="Folder of the metrics files the report reads."),
    out: Path = typer.Option(METRICS / "report.md", "--out", help="The report (Markdown)."),
    headline_json: Path = typer.Option(
        METRICS / "headline.json", "--headline", help="The headline metrics (the numbers to compare first)."
    ),
    width: Path = typer.Option(
        None, "--width", help="Folder of the width experiment's width.md and width.png, embedded when present."
    ),
    bn: Path = typer.Option(None, "--bn", help="Folder of the BN experiment's barriers.md, embedded when present."),
    instability: Path = typer.Option(
        None, "--instability", help="Folder of the instability experiment's summary, embedded when present."
    ),
) -> None:
    """Write the run report and the headline metrics from the metrics files (params: train.seeds, simplex.seeds)."""
    (train,) = read_sections(params, "train")
    simplexes = read_sections(params, "simplex")[0].seeds if "simplex" in read_params(params) else ()
    text, head = build(metrics, out, list(train.seeds), width, bn, instability, simplex_seeds=simplexes)
    atomic_write_text(out, text)
    write_json(headline_json, head)
    console.print(f"report of {len(report.links(text))} linked files → {out}; headline metrics → {headline_json}")


app = stage_app(main)

if __name__ == "__main__":
    app()
