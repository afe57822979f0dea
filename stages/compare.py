"""Stage compare: independent, Snapshot and Fast Geometric ensembles at equal budgets (paper, Sec. 5).

B = ``train.epochs``. Every member counts all the epochs its method spent before it existed, pretraining
included (:func:`modeconn.budget.budget_members`); at budget kB each method ensembles the members it could
afford (:func:`modeconn.budget.compare_budgets`): Ind, SSE, FGE and SWA (each FGE run's snapshots averaged
into one network) and, with ``--simplex``, ESPRO (the sampled points of the simplexes of ``simplex.seeds``, each
simplex costing its ``start_epoch + epochs``), with the expected calibration error of every ensemble; the
reliability diagram shows them at 1B on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import typer

from modeconn.budget import Pool, budget_members, compare_budgets, markdown, reliability_at
from modeconn.errors import CheckpointError
from modeconn.io import atomic_write_text
from modeconn.plots import accuracy_vs_epochs, reliability_diagrams
from modeconn.snapshots import load_snapshots

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import TrainConfig, read_sections
from .kit.inputs import read_predictions, simplex_predictions
from .kit.layout import ENDPOINT_HINT, ENDPOINTS, endpoint_dir
from .kit.records import write_csv, write_metrics


def gather(train: TrainConfig, endpoints: Path, fge_path: Path, sse_path: Path, espro: Sequence[dict] = ()) -> Pool:
    """Every member with its cost from the endpoints' and the FGE and SSE runs' (and simplexes') predictions."""
    independent, labels, val_labels = [], None, None
    for seed in train.seeds:
        folder = endpoint_dir(endpoints, seed)
        blob = read_predictions(folder / "test_logprobs.pt", f"test predictions of seed {seed}", ENDPOINT_HINT)
        labels = blob["labels"] if labels is None else labels
        if not torch.equal(blob["labels"], labels):
            raise CheckpointError(f"seed {seed}'s predictions are of another test set: rerun `dvc repro`")
        val_lp = None
        if (folder / "val_logprobs.pt").exists():
            val = read_predictions(folder / "val_logprobs.pt", f"validation predictions of seed {seed}", ENDPOINT_HINT)
            val_labels, val_lp = val["labels"], val["logprobs"]
        independent.append((blob["logprobs"], val_lp))
    runs = {}
    for stage, path in (("fge", fge_path), ("sse", sse_path)):
        blob = load_snapshots(path, f"{stage} snapshots", f"Run `dvc repro {stage}` to create them.")
        if not torch.equal(blob["labels"], labels):
            raise CheckpointError(f"{path} holds predictions on another test set than the endpoints: rerun `dvc repro`")
        runs[stage] = blob["runs"]
    for run in espro:
        val_ok = val_labels is None or run["val_logprobs"] is not None and torch.equal(run["val_labels"], val_labels)
        if not (torch.equal(run["labels"], labels) and val_ok):
            raise CheckpointError("the simplexes' predictions are of another test or validation set: rerun `dvc repro`")
    return budget_members(train.epochs, independent, runs["fge"], runs["sse"], labels, val_labels, espro)


def main(
    params: Path = ParamsOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of endpoint outputs."),
    fge: Path = typer.Option(Path("data/fge/snapshots.pt"), "--fge", help="FGE snapshots file."),
    sse: Path = typer.Option(Path("data/sse/snapshots.pt"), "--sse", help="SSE snapshots file."),
    simplex: Path = typer.Option(None, "--simplex", help="Folder of the simplex stage's outputs: adds ESPRO."),
    metrics: Path = typer.Option(Path("metrics/compare.json"), "--metrics", help="Results JSON."),
    table: Path = typer.Option(Path("metrics/compare.md"), "--table", help="Markdown table."),
    curve_csv: Path = typer.Option(
        Path("metrics/compare_epochs"),
        "--curve-csv",
        help="Folder of <method>.csv: ensemble accuracy against epochs (DVC plot).",
    ),
    figure: Path = typer.Option(Path("metrics/compare.png"), "--figure", help="PNG of that curve."),
    reliability_figure: Path = typer.Option(
        Path("metrics/reliability.png"), "--reliability", help="PNG: reliability diagrams at 1B on test."
    ),
) -> None:
    """Compare Ind, SSE, FGE, SWA (and ESPRO) ensembles at budgets kB (params: train.epochs, train.seeds, compare,
    simplex.seeds)."""
    cfg, train = read_sections(params, "compare", "train")
    espro = simplex_predictions(simplex, read_sections(params, "simplex")[0].seeds) if simplex is not None else []
    pool = gather(train, endpoints, fge, sse, espro)
    result = compare_budgets(pool, train.epochs, cfg.budgets, cfg.ensemble)
    splits = pool.splits
    setup = {
        "B": train.epochs,
        "seeds": list(train.seeds),
        "ensemble": cfg.ensemble,
        "test_samples": int(splits["test"].numel()),
        "val_samples": int(splits["val"].numel()) if "val" in splits else 0,
    }
    write_metrics(metrics, result.tables, setup)
    rows = {m: result.over_cost[m].to_dict("records") for m in pool.methods}
    for m in pool.methods:
        write_csv(curve_csv / f"{m}.csv", rows[m])
    text = markdown(result.tables, setup, cfg.budgets)
    atomic_write_text(table, text)
    title = f"Ensembles at equal budgets (B = {train.epochs} epochs)"
    accuracy_vs_epochs([r for m in pool.methods for r in rows[m]], train.epochs, figure, title=title)
    title = f"Reliability at 1B ({train.epochs} epochs), test set, 15 bins"
    reliability_diagrams(reliability_at(pool, train.epochs, cfg.ensemble), reliability_figure, title=title)
    console.print(text, highlight=False)


app = stage_app(main)

if __name__ == "__main__":
    app()
