"""Comparing ensembles at equal training budgets (paper, Sec. 5; DESIGN decision 4).

B is the number of epochs of one standard training run. Every ensemble
member carries ``cost``: the total epochs its method had spent when the member
became available, everything counted (pretraining included). The ensemble of
a method at budget kB is made of all its members with cost ≤ kB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import calibration, ensemble


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
