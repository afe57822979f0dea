"""Comparing ensembles at equal training budgets (paper, Sec. 5; DESIGN decision 4).

B is the number of epochs of one standard training run. Every ensemble
member carries ``cost``: the total epochs its method had spent when the member
became available, everything counted (pretraining included). The ensemble of
a method at budget kB is made of all its members with cost ≤ kB.

:func:`budget_members` counts the members of independent training, FGE, SSE and SWA (Izmailov et al. 2018):
the k-th independent network costs k·B; an SSE snapshot its epoch in the SSE run; the j-th snapshot of FGE run
r costs r·(start_epoch + epochs) + start_epoch + its epoch in the run (the pretraining is counted even though
it is the endpoint run's first epochs). Run r's SWA network (its snapshots' weights averaged, BatchNorm
recalibrated) costs what its last snapshot costs: its averaging and BN pass, one forward pass over the
training set, are not counted, as no evaluation pass is. At kB the ``swa`` method ensembles the SWA networks
of the FGE runs that fit: at 1B the single SWA network of the first run, against that run's snapshot ensemble.
ESPRO (Benton et al. 2021, where given): points sampled from simplexes trained one after another, simplex r's
points costing the simplexes before it plus its own cost (its fixed vertex's training epochs, counted as FGE's
pretraining is, and the epochs its free vertices trained); at 1B the points of the first simplex.
:func:`compare_budgets` gives each method at each budget (error, NLL, expected calibration error, members),
the spread over replicates at 1B and the ensemble after each member joins (the paper's Fig. 5).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from . import calibration, ensemble

METHODS = ("ind", "sse", "fge", "swa")
NAMES = {
    "ind": "Ind (independent networks)",
    "sse": "SSE (Snapshot Ensembles)",
    "fge": "FGE",
    "swa": "SWA (FGE snapshots averaged)",
    "espro": "ESPRO (points of trained simplexes)",
}


@dataclass
class Member:
    method: str
    cost: float  # cumulative epochs spent by the method when this member exists
    logprobs: torch.Tensor  # (N_test, K)
    val_logprobs: torch.Tensor | None = None  # (N_val, K), where there is a validation split

    def on(self, split: str) -> torch.Tensor | None:
        """The member's log-probabilities on ``split`` (``test`` or ``val``)."""
        return self.logprobs if split == "test" else self.val_logprobs


def at_budget(
    members: list[Member], budget: float, labels: torch.Tensor, method: str = "probs", split: str = "test"
) -> dict | None:
    """Accuracy, NLL, error and expected calibration error (15 bins, :func:`modeconn.calibration.ece`) on
    ``split`` (``test`` or ``val``, with its ``labels``) of the members affordable within ``budget`` epochs;
    None if there are none.

    The error is named ``<split>_error``: `dvc metrics` takes a key named ``error`` for a failure.
    """
    affordable = affordable_members(members, budget)
    if not affordable:
        return None
    lp = ensemble.combine([m.on(split) for m in affordable], method)
    return {
        "accuracy": ensemble.accuracy(lp, labels),
        "nll": ensemble.nll(lp, labels),
        f"{split}_error": 1 - ensemble.accuracy(lp, labels),
        "ece": calibration.ece(lp, labels),
        "members": len(affordable),
    }


def affordable_members(members: list[Member], budget: float) -> list[Member]:
    """The members that exist within ``budget`` epochs, cheapest first."""
    return [m for m in sorted(members, key=lambda m: m.cost) if m.cost <= budget + 1e-9]


def ensemble_at(
    members: list[Member], budget: float, method: str = "probs", split: str = "test"
) -> torch.Tensor | None:
    """Log-probabilities [N, K] on ``split`` of the ensemble affordable within ``budget``; None if empty."""
    affordable = affordable_members(members, budget)
    return ensemble.combine([m.on(split) for m in affordable], method) if affordable else None


def over_cost(members: list[Member], labels: torch.Tensor, method: str = "probs") -> list[dict]:
    """The ensemble's accuracy and NLL each time a member joins (the paper's Fig. 5)."""
    rows, chosen = [], []
    for m in sorted(members, key=lambda m: m.cost):
        chosen.append(m.logprobs)
        lp = ensemble.combine(chosen, method)
        rows.append(
            {
                "method": m.method,
                "epochs": m.cost,
                "members": len(chosen),
                "accuracy": ensemble.accuracy(lp, labels),
                "nll": ensemble.nll(lp, labels),
                "ece": calibration.ece(lp, labels),
            }
        )
    return rows


@dataclass
class Pool:
    """Every member of every method with its cost, each method's replicates at 1B, and the labels of each split."""

    members: list[Member]
    singles: dict[str, list[list[Member]]]  # method → one list of members per replicate, costs from 0 (at 1B)
    splits: dict[str, torch.Tensor]  # "test" (and "val", when every member has validation predictions) → labels
    methods: tuple[str, ...] = METHODS  # the methods compared: METHODS, and "espro" where there are simplexes


def budget_members(
    B: float,
    independent: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    fge_runs: Sequence[dict],
    sse_runs: Sequence[dict],
    labels: torch.Tensor,
    val_labels: torch.Tensor | None = None,
    espro_runs: Sequence[dict] = (),
) -> Pool:
    """The members of each method, costed in epochs with ``B`` the epochs of one standard training run.

    ``independent``: (test, validation or None) log-probabilities [N, K] of each independently trained network,
    in order; ``fge_runs`` and ``sse_runs``: the run records of :func:`modeconn.snapshots.train_runs` (each with
    ``start_epoch``, ``cost``, ``snapshots`` of ``epoch``, ``logprobs`` and ``val_logprobs``, and ``swa`` where
    SWA was on). ``labels`` / ``val_labels``: of the test and validation splits. ``espro_runs``: one per
    simplex, in order, each with ``cost`` (all the epochs it took) and its sampled points' ``logprobs``
    [n, N, K] (and ``val_logprobs`` [n, N_val, K] or None).
    """
    members: list[Member] = []
    singles: dict[str, list[list[Member]]] = {"ind": [], "fge": [], "swa": []}
    for k, (lp, val_lp) in enumerate(independent):
        members.append(Member("ind", (k + 1) * B, lp, val_lp))
        singles["ind"].append([Member("ind", B, lp, val_lp)])
    for method, runs in (("fge", fge_runs), ("sse", sse_runs)):
        spent = 0.0
        for run in runs:
            members += [
                Member(method, spent + run["start_epoch"] + s["epoch"], s["logprobs"], s.get("val_logprobs"))
                for s in run["snapshots"]
            ]
            if method == "fge":
                singles["fge"].append(
                    [
                        Member(method, run["start_epoch"] + s["epoch"], s["logprobs"], s.get("val_logprobs"))
                        for s in run["snapshots"]
                    ]
                )
                swa = run.get("swa")  # the run's snapshots averaged into one network (absent: no SWA row)
                if swa is not None:
                    cost = run["start_epoch"] + swa["epoch"]  # available with the run's last snapshot
                    members.append(Member("swa", spent + cost, swa["logprobs"], swa.get("val_logprobs")))
                    singles["swa"].append([Member("swa", cost, swa["logprobs"], swa.get("val_logprobs"))])
            spent += run["cost"]
    if espro_runs:
        singles["espro"], spent = [], 0.0
    for run in espro_runs:
        val = run.get("val_logprobs")
        points = [(lp, None if val is None else val[j]) for j, lp in enumerate(run["logprobs"])]
        members += [Member("espro", spent + run["cost"], lp, val_lp) for lp, val_lp in points]
        singles["espro"].append([Member("espro", run["cost"], lp, val_lp) for lp, val_lp in points])
        spent += run["cost"]
    splits = {"test": labels}
    if val_labels is not None and all(m.val_logprobs is not None for m in members):
        splits["val"] = val_labels
    return Pool(members, singles, splits, METHODS + (("espro",) if espro_runs else ()))


@dataclass
class BudgetComparison:
    """Each method at each budget kB (``tables``: test at the top level, ``1B``, ``2B``, …, and
    ``1B_over_seeds``; the same on the validation split under ``val``) and the ensemble after each member joins
    (``over_cost``: per method, one row per member in order of cost)."""

    tables: dict
    over_cost: dict[str, pd.DataFrame]


def compare_budgets(pool: Pool, B: float, budgets: Sequence[int], method: str = "probs") -> BudgetComparison:
    """Each method of ``pool`` at each budget kB, k in ``budgets`` (``None`` → ``{"members": 0}``: an
    unaffordable budget), the mean and spread of each method's replicates at 1B, and the ensemble after each
    member joins; members combined by ``method`` (``probs`` or ``logits``)."""
    members, splits = pool.members, pool.splits

    def table(split: str) -> dict:
        # An unaffordable budget is 0 members, not null: `dvc metrics` reads scalar leaves only.
        out: dict = {}
        for k in budgets:
            out[f"{k}B"] = {
                m: at_budget([x for x in members if x.method == m], k * B, splits[split], method, split)
                or {"members": 0}
                for m in pool.methods
            }
        spread = {}
        for m, reps in pool.singles.items():
            runs = (at_budget(rep, B, splits[split], method, split) for rep in reps)
            accs = [r["accuracy"] for r in runs if r]
            if accs:
                spread[m] = {
                    "mean_accuracy": statistics.fmean(accs),
                    "std_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "n": len(accs),
                }
        out["1B_over_seeds"] = spread
        return out

    tables = table("test")
    if "val" in splits:
        tables["val"] = table("val")
    rows = {
        m: pd.DataFrame(over_cost([x for x in members if x.method == m], splits["test"], method)) for m in pool.methods
    }
    return BudgetComparison(tables, rows)


def reliability_at(pool: Pool, budget: float, method: str = "probs") -> dict[str, calibration.Reliability]:
    """The reliability bins (test) of each method's ensemble at ``budget``, by the method's short name (Ind, SSE,
    FGE, SWA, ESPRO); a method with no member within the budget left out."""
    out = {}
    for m in pool.methods:
        lp = ensemble_at([x for x in pool.members if x.method == m], budget, method)
        if lp is not None:
            out[NAMES[m].split(" (")[0]] = calibration.reliability(lp, pool.splits["test"])
    return out


def markdown(tables: dict, setup: dict, budgets: Sequence[int]) -> str:
    """The tables of :func:`compare_budgets` in Markdown: error % / NLL / ECE % / members per method, split and
    budget, then the spread at 1B. ``setup``: ``B``, ``ensemble`` and ``test_samples`` (``val_samples``)."""
    B = setup["B"]
    splits = [("test", tables, setup["test_samples"])]
    if "val" in tables:
        splits.append(("val", tables["val"], setup["val_samples"]))
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
    for m in (m for m in NAMES if m in tables[f"{budgets[0]}B"]):  # the methods compared, in NAMES' order
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
            lines.append(f"| {NAMES[m]} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "At 1B over seeds (each replicate a different endpoint seed; SSE has one run):", ""]
    for m, s in tables["1B_over_seeds"].items():
        text = f"- {NAMES[m]}: test accuracy {100 * s['mean_accuracy']:.2f} ± {100 * s['std_accuracy']:.2f} %"
        if "val" in tables and m in tables["val"]["1B_over_seeds"]:
            v = tables["val"]["1B_over_seeds"][m]
            text += f", validation {100 * v['mean_accuracy']:.2f} ± {100 * v['std_accuracy']:.2f} %"
        lines.append(text + f" (n = {s['n']})")
    return "\n".join(lines) + "\n"
