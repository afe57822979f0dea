"""Stage compare: independent, Snapshot and Fast Geometric ensembles at equal budgets (paper, Sec. 5).

B = ``train.epochs``. Every member counts all the epochs its method spent
before it existed: the k-th independent network costs k·B; an SSE snapshot
its epoch in the SSE run; the j-th snapshot of FGE run r costs
r·(start_epoch + fge.epochs) + start_epoch + its epoch in the run (the
pretraining is counted even though it is the endpoint run's first epochs).
At budget kB each method ensembles the members it could afford.

SWA (Izmailov et al. 2018): the average of one FGE run's snapshot weights, BatchNorm recalibrated, is one
network; run r's SWA network costs what its last snapshot costs (its averaging and BN pass, one forward pass
over the training set, are not counted, as no evaluation pass is). At kB the ``swa`` row ensembles the SWA
networks of the FGE runs that fit: at 1B the single SWA network of the first run, against that run's
snapshot ensemble in the ``fge`` row. Every ensemble also gets its expected calibration error (``ece``,
15 equal-width bins); the reliability diagram shows Ind, SSE, FGE and SWA at 1B on test.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
import typer

from modeconn.budget import Member, at_budget, ensemble_at, over_cost
from modeconn.calibration import reliability
from modeconn.errors import CheckpointError
from modeconn.io import atomic_write_text, load_file
from modeconn.plots import accuracy_vs_epochs, reliability_diagrams

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import CompareConfig, TrainConfig, read_sections
from .kit.layout import ENDPOINTS
from .kit.records import write_csv, write_metrics

METHODS = ("ind", "sse", "fge", "swa")
NAMES = {
    "ind": "Ind (independent networks)",
    "sse": "SSE (Snapshot Ensembles)",
    "fge": "FGE",
    "swa": "SWA (FGE snapshots averaged)",
}


def load_snapshots(path: Path, stage: str) -> dict:
    blob = load_file(path, f"{stage} snapshots", f"Run `dvc repro {stage}` to create them.")
    if not isinstance(blob, dict) or blob.get("format") != "modeconn.snapshots/1":
        raise CheckpointError(f"{path} is not a modeconn snapshots file. Run `dvc repro {stage}`.")
    return blob


def gather(train: TrainConfig, endpoints: Path, fge_path: Path, sse_path: Path):
    """All members with their costs, the labels of each split, and each method's replicates at 1B.

    ``labels`` maps ``test`` (and ``val``, when every member has validation predictions) to the split's labels.
    """
    B = train.epochs
    members, labels, val_labels, singles = [], None, None, {"ind": [], "fge": [], "swa": []}
    for k, seed in enumerate(train.seeds):
        folder = endpoints / f"seed_{seed}"
        blob = load_file(
            folder / "test_logprobs.pt", f"test predictions of seed {seed}", "Run `dvc repro train_endpoint`."
        )
        labels = blob["labels"] if labels is None else labels
        if not torch.equal(blob["labels"], labels):
            raise CheckpointError(f"seed {seed}'s predictions are of another test set: rerun `dvc repro`")
        val_lp = None
        if (folder / "val_logprobs.pt").exists():
            val = load_file(folder / "val_logprobs.pt", f"validation predictions of seed {seed}", "Run `dvc repro`.")
            val_labels, val_lp = val["labels"], val["logprobs"]
        members.append(Member("ind", (k + 1) * B, blob["logprobs"], val_lp))
        singles["ind"].append([Member("ind", B, blob["logprobs"], val_lp)])
    for stage, path in (("fge", fge_path), ("sse", sse_path)):
        blob = load_snapshots(path, stage)
        if not torch.equal(blob["labels"], labels):
            raise CheckpointError(f"{path} holds predictions on another test set than the endpoints: rerun `dvc repro`")
        spent = 0.0
        for run in blob["runs"]:
            run_members = [
                Member(stage, spent + run["start_epoch"] + s["epoch"], s["logprobs"], s.get("val_logprobs"))
                for s in run["snapshots"]
            ]
            members += run_members
            if stage == "fge":
                singles["fge"].append(
                    [
                        Member(stage, run["start_epoch"] + s["epoch"], s["logprobs"], s.get("val_logprobs"))
                        for s in run["snapshots"]
                    ]
                )
                swa = run.get("swa")  # the run's snapshots averaged into one network (absent: no SWA row)
                if swa is not None:
                    cost = run["start_epoch"] + swa["epoch"]  # available with the run's last snapshot
                    members.append(Member("swa", spent + cost, swa["logprobs"], swa.get("val_logprobs")))
                    singles["swa"].append([Member("swa", cost, swa["logprobs"], swa.get("val_logprobs"))])
            spent += run["cost"]
    splits = {"test": labels}
    if val_labels is not None and all(m.val_logprobs is not None for m in members):
        splits["val"] = val_labels
    return members, splits, singles


def compare(cfg: CompareConfig, train: TrainConfig, members, splits, singles) -> tuple[dict, list[dict]]:
    """Each method at each budget, the replicates at 1B, and the ensemble after each member joins (rows).

    Test figures at the top level (``1B``, ``2B``, …); the same on the validation split under ``val`` — the
    split on which settings are chosen.
    """
    B = train.epochs

    def table(split: str) -> dict:
        # An unaffordable budget is 0 members, not null: `dvc metrics` reads scalar leaves only.
        out: dict = {}
        for k in cfg.budgets:
            out[f"{k}B"] = {
                m: at_budget([x for x in members if x.method == m], k * B, splits[split], cfg.ensemble, split)
                or {"members": 0}
                for m in METHODS
            }
        spread = {}
        for m, reps in singles.items():
            runs = (at_budget(rep, B, splits[split], cfg.ensemble, split) for rep in reps)
            accs = [r["accuracy"] for r in runs if r]
            if accs:
                spread[m] = {
                    "mean_accuracy": statistics.fmean(accs),
                    "std_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "n": len(accs),
                }
        out["1B_over_seeds"] = spread
        return out

    result = table("test")
    if "val" in splits:
        result["val"] = table("val")
    rows = []
    for m in METHODS:
        rows += over_cost([x for x in members if x.method == m], splits["test"], cfg.ensemble)
    return result, rows


def markdown(result: dict, setup: dict, budgets) -> str:
    names = NAMES
    B = setup["B"]
    splits = [("test", result, setup["test_samples"])]
    if "val" in result:
        splits.append(("val", result["val"], setup["val_samples"]))
    lines = [
        f"Error (%), NLL and ensemble size at equal training budgets; B = {B} epochs; ensembles average "
        f"{'probabilities' if setup['ensemble'] == 'probs' else 'logits'}; "
        + "; ".join(f"{n} {name} images" for name, _, n in splits)
        + ". Settings are chosen on the validation split, never on test. ECE: expected calibration error, "
        "15 equal-width confidence bins. SWA: each FGE run's snapshots averaged into one network (BN "
        "recalibrated); its members are SWA networks, one per FGE run that fits the budget.",
        "",
        "| method | split | "
        + " | ".join(f"{k}B ({k * B} ep): error % / NLL / ECE % / members" for k in budgets)
        + " |",
        "|---|---" + "|---" * len(budgets) + "|",
    ]
    for m in METHODS:
        for name, res, _ in splits:
            cells = []
            for k in budgets:
                r = res[f"{k}B"][m]
                err = r.get(f"{name}_error")
                cells.append(
                    "—"
                    if not r["members"]
                    else f"{100 * err:.2f} / {r['nll']:.4f} / {100 * r['ece']:.2f} / {r['members']}"
                )
            lines.append(f"| {names[m]} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "At 1B over seeds (each replicate a different endpoint seed; SSE has one run):", ""]
    for m, s in result["1B_over_seeds"].items():
        text = f"- {names[m]}: test accuracy {100 * s['mean_accuracy']:.2f} ± {100 * s['std_accuracy']:.2f} %"
        if "val" in result and m in result["val"]["1B_over_seeds"]:
            v = result["val"]["1B_over_seeds"][m]
            text += f", validation {100 * v['mean_accuracy']:.2f} ± {100 * v['std_accuracy']:.2f} %"
        lines.append(text + f" (n = {s['n']})")
    return "\n".join(lines) + "\n"


def reliability_at_1b(members, labels, B: int, method: str, path: Path) -> None:
    """Reliability diagrams (test) of each method's ensemble at 1B, the methods with no member at 1B left out."""
    diagrams = {}
    for m in METHODS:
        lp = ensemble_at([x for x in members if x.method == m], B, method)
        if lp is not None:
            diagrams[NAMES[m].split(" (")[0]] = reliability(lp, labels)
    reliability_diagrams(diagrams, path, title=f"Reliability at 1B ({B} epochs), test set, 15 bins")


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
    reliability_figure: Path = typer.Option(
        Path("metrics/reliability.png"), "--reliability", help="PNG: reliability diagrams at 1B on test."
    ),
) -> None:
    """Compare Ind, SSE, FGE and SWA ensembles at budgets kB (params: train.epochs, train.seeds, compare)."""
    cfg, train = read_sections(params, "compare", "train")
    members, splits, singles = gather(train, endpoints, fge, sse)
    result, rows = compare(cfg, train, members, splits, singles)
    setup = {
        "B": train.epochs,
        "seeds": list(train.seeds),
        "ensemble": cfg.ensemble,
        "test_samples": int(splits["test"].numel()),
        "val_samples": int(splits["val"].numel()) if "val" in splits else 0,
    }
    write_metrics(metrics, result, setup)
    for m in METHODS:
        write_csv(curve_csv / f"{m}.csv", [r for r in rows if r["method"] == m])
    text = markdown(result, setup, cfg.budgets)
    atomic_write_text(table, text)
    accuracy_vs_epochs(rows, train.epochs, figure, title=f"Ensembles at equal budgets (B = {train.epochs} epochs)")
    reliability_at_1b(members, splits["test"], train.epochs, cfg.ensemble, reliability_figure)
    console.print(text, highlight=False)


app = stage_app(main)

if __name__ == "__main__":
    app()
