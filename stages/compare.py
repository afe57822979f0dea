"""Stage compare: independent, Snapshot and Fast Geometric ensembles at equal budgets (paper, Sec. 5).

B = ``train.epochs``. Every member counts all the epochs its method spent
before it existed: the k-th independent network costs k·B; an SSE snapshot
its epoch in the SSE run; the j-th snapshot of FGE run r costs
r·(start_epoch + fge.epochs) + start_epoch + its epoch in the run (the
pretraining is counted even though it is the endpoint run's first epochs).
At budget kB each method ensembles the members it could afford.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
import typer

from modeconn.budget import Member, at_budget, over_cost
from modeconn.errors import CheckpointError
from modeconn.io import atomic_write_text, load_file
from modeconn.plots import accuracy_vs_epochs

from .common import ENDPOINTS, ParamsOpt, console, stage_app, write_csv, write_metrics
from .config import CompareConfig, TrainConfig, read_sections

METHODS = ("ind", "sse", "fge")


def load_snapshots(path: Path, stage: str) -> dict:
    blob = load_file(path, f"{stage} snapshots", f"Run `dvc repro {stage}` to create them.")
    if not isinstance(blob, dict) or blob.get("format") != "modeconn.snapshots/1":
        raise CheckpointError(f"{path} is not a modeconn snapshots file. Run `dvc repro {stage}`.")
    return blob


def gather(train: TrainConfig, endpoints: Path, fge_path: Path, sse_path: Path):
    """All members with their costs, the test labels, and each method's replicates at 1B."""
    B = train.epochs
    members, labels, singles = [], None, {"ind": [], "fge": []}
    for k, seed in enumerate(train.seeds):
        blob = load_file(
            endpoints / f"seed_{seed}" / "test_logprobs.pt",
            f"test predictions of seed {seed}",
            "Run `dvc repro train_endpoint`.",
        )
        labels = blob["labels"] if labels is None else labels
        if not torch.equal(blob["labels"], labels):
            raise CheckpointError(f"seed {seed}'s predictions are of another test set: rerun `dvc repro`")
        members.append(Member("ind", (k + 1) * B, blob["logprobs"]))
        singles["ind"].append([Member("ind", B, blob["logprobs"])])
    for stage, path in (("fge", fge_path), ("sse", sse_path)):
        blob = load_snapshots(path, stage)
        if not torch.equal(blob["labels"], labels):
            raise CheckpointError(f"{path} holds predictions on another test set than the endpoints: rerun `dvc repro`")
        spent = 0.0
        for run in blob["runs"]:
            run_members = [
                Member(stage, spent + run["start_epoch"] + s["epoch"], s["logprobs"]) for s in run["snapshots"]
            ]
            members += run_members
            if stage == "fge":
                singles["fge"].append(
                    [Member(stage, run["start_epoch"] + s["epoch"], s["logprobs"]) for s in run["snapshots"]]
                )
            spent += run["cost"]
    return members, labels, singles


def compare(cfg: CompareConfig, train: TrainConfig, members, labels, singles) -> tuple[dict, list[dict]]:
    """Each method at each budget, the replicates at 1B, and the ensemble after each member joins (rows)."""
    B = train.epochs
    # An unaffordable budget is 0 members, not null: `dvc metrics` reads scalar leaves only.
    result: dict = {}
    for k in cfg.budgets:
        result[f"{k}B"] = {
            m: at_budget([x for x in members if x.method == m], k * B, labels, cfg.ensemble) or {"members": 0}
            for m in METHODS
        }
    spread = {}
    for m, reps in singles.items():
        accs = [r["accuracy"] for r in (at_budget(rep, B, labels, cfg.ensemble) for rep in reps) if r]
        if accs:
            spread[m] = {
                "mean_accuracy": statistics.fmean(accs),
                "std_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "n": len(accs),
            }
    result["1B_over_seeds"] = spread
    rows = []
    for m in METHODS:
        rows += over_cost([x for x in members if x.method == m], labels, cfg.ensemble)
    return result, rows


def markdown(result: dict, setup: dict, budgets) -> str:
    names = {"ind": "Ind (independent networks)", "sse": "SSE (Snapshot Ensembles)", "fge": "FGE"}
    B = setup["B"]
    head = "| method | " + " | ".join(f"{k}B ({k * B} ep): error % / NLL / members" for k in budgets) + " |"
    lines = [
        f"Test error (%), NLL and ensemble size at equal training budgets; B = {B} epochs; "
        f"ensembles average {'probabilities' if setup['ensemble'] == 'probs' else 'logits'}; "
        f"{setup['test_samples']} test images.",
        "",
        head,
        "|---" * (len(budgets) + 1) + "|",
    ]
    for m in METHODS:
        cells = []
        for k in budgets:
            r = result[f"{k}B"][m]
            cells.append("—" if not r["members"] else f"{100 * r['test_error']:.2f} / {r['nll']:.4f} / {r['members']}")
        lines.append(f"| {names[m]} | " + " | ".join(cells) + " |")
    lines += ["", "At 1B over seeds (each replicate a different endpoint seed; SSE has one run):", ""]
    for m, s in result["1B_over_seeds"].items():
        lines.append(
            f"- {names[m]}: accuracy {100 * s['mean_accuracy']:.2f} ± {100 * s['std_accuracy']:.2f} % (n = {s['n']})"
        )
    return "\n".join(lines) + "\n"


def main(
    params: Path = ParamsOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of endpoint outputs."),
    fge: Path = typer.Option(Path("data/fge/snapshots.pt"), "--fge", help="FGE snapshots file."),
    sse: Path = typer.Option(Path("data/sse/snapshots.pt"), "--sse", help="SSE snapshots file."),
    metrics: Path = typer.Option(Path("metrics/compare.json"), "--metrics", help="Results JSON."),
    table: Path = typer.Option(Path("metrics/compare.md"), "--table", help="Markdown table."),
    curve_csv: Path = typer.Option(
        Path("metrics/compare_epochs"),
        "--curve-csv",
        help="Folder of <method>.csv: ensemble accuracy against epochs (DVC plot).",
    ),
    figure: Path = typer.Option(Path("metrics/compare.png"), "--figure", help="PNG of that curve."),
) -> None:
    """Compare Ind, SSE and FGE ensembles at budgets kB (params: train.epochs, train.seeds, compare)."""
    cfg, train = read_sections(params, "compare", "train")
    members, labels, singles = gather(train, endpoints, fge, sse)
    result, rows = compare(cfg, train, members, labels, singles)
    setup = {
        "B": train.epochs,
        "seeds": list(train.seeds),
        "ensemble": cfg.ensemble,
        "test_samples": int(labels.numel()),
    }
    write_metrics(metrics, result, setup)
    for m in METHODS:
        write_csv(curve_csv / f"{m}.csv", [r for r in rows if r["method"] == m])
    text = markdown(result, setup, cfg.budgets)
    atomic_write_text(table, text)
    accuracy_vs_epochs(rows, train.epochs, figure, title=f"Ensembles at equal budgets (B = {train.epochs} epochs)")
    console.print(text, highlight=False)


app = stage_app(main)

if __name__ == "__main__":
    app()
