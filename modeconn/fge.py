"""Fast Geometric Ensembling and Snapshot Ensembles (paper, Sec. 5).

Both are one training run that stops at chosen iterations to record a
snapshot's test-set predictions:

- FGE starts from a network pretrained with the standard schedule and cycles
  the learning rate linearly between ``lr_1`` and ``lr_2`` (:func:`schedules.fge_lr`),
  with a snapshot at each minimum (the middle of each cycle).
- SSE (Huang et al. 2017) trains from scratch with cosine annealing and warm
  restarts (:func:`schedules.sse_lr`), a snapshot at the end of each cycle.

A snapshot records where it was taken (iteration, epoch), its test
log-probabilities and its distance in weight space to the previous snapshot
(the paper contrasts ≈7 for FGE with ≈40 for SSE on PreResNet-164).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import ensemble, schedules
from .runtime import CPU, Runtime
from .train import EpochStats, LossFn, predict, train_epoch
from .weights import flat


@dataclass
class Snapshot:
    iteration: int
    epoch: float  # epochs into this run
    logprobs: torch.Tensor  # (N_test, K)
    distance: float  # ‖w − w_prev‖ to the previous snapshot (nan for the first)


def cycle_iterations(cycle_epochs: float, iters_per_epoch: int) -> int:
    """A cycle of ``cycle_epochs`` in iterations, rounded to an even number ≥ 2 (the snapshot sits mid-cycle)."""
    c = max(2, round(cycle_epochs * iters_per_epoch))
    return c + (c % 2)


def run_snapshots(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    train_batches,
    test_batches,
    epochs: int,
    lr_at: Callable[[int], float],
    is_snapshot: Callable[[int], bool],
    runtime: Runtime = CPU,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
    what: str = "training",
) -> list[Snapshot]:
    """Train for ``epochs``; after every iteration ``i`` with ``is_snapshot(i)``, record a snapshot."""
    n = len(train_batches)
    snapshots: list[Snapshot] = []
    prev: list[torch.Tensor | None] = [None]

    def on_step(i: int) -> None:
        if not is_snapshot(i):
            return
        model.eval()
        logprobs, _ = predict(model, test_batches, runtime)
        model.train()
        w = flat(dict(model.named_parameters()))
        dist = (w - prev[0]).norm().item() if prev[0] is not None else float("nan")
        prev[0] = w
        snapshots.append(Snapshot(iteration=i, epoch=i / n, logprobs=logprobs, distance=dist))

    iteration = 1
    for epoch in range(1, epochs + 1):
        model.train()
        stats, iteration = train_epoch(
            loss_fn, optimizer, train_batches, lr_at, iteration, runtime, on_step=on_step, what=what
        )
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return snapshots


def fge_schedule(cycle_iters: int, lr_1: float, lr_2: float):
    """(lr_at, is_snapshot) of FGE for a cycle of ``cycle_iters`` iterations."""
    return (lambda i: schedules.fge_lr(i, cycle_iters, lr_1, lr_2), lambda i: schedules.fge_is_snapshot(i, cycle_iters))


def sse_schedule(total_iters: int, cycles: int, lr: float):
    """(lr_at, is_snapshot) of Snapshot Ensembles over ``total_iters`` in ``cycles`` cycles."""
    return (
        lambda i: schedules.sse_lr(i, total_iters, cycles, lr),
        lambda i: schedules.sse_is_snapshot(i, total_iters, cycles),
    )


def snapshot_rows(
    run: int, seed: int, snapshots: list[Snapshot], labels: torch.Tensor, offset: float, method: str = "probs"
) -> list[dict]:
    """One row per snapshot of a run: its own accuracy and NLL, and those of the run's ensemble so far.

    ``offset`` is the epochs spent before the run (FGE: its pretraining), so ``cost`` = offset + epoch.
    """
    running = ensemble.running([s.logprobs for s in snapshots], labels, method)
    return [
        {
            "run": run,
            "seed": seed,
            "snapshot": j + 1,
            "epoch": s.epoch,
            "cost": offset + s.epoch,
            **ensemble.scores(s.logprobs, labels),
            "ensemble_accuracy": ens["accuracy"],
            "ensemble_nll": ens["nll"],
            "distance": s.distance,
        }
        for j, (s, ens) in enumerate(zip(snapshots, running))
    ]


def runs_summary(rows: list[dict]) -> dict:
    """Over the rows of :func:`snapshot_rows` of one or more runs: the final ensembles (mean over runs),
    the single snapshots, and the mean distance between consecutive snapshots."""
    runs = sorted({r["run"] for r in rows})
    per_run = [[r for r in rows if r["run"] == i] for i in runs]
    finals = [rr[-1] for rr in per_run]
    dists = [r["distance"] for r in rows if not math.isnan(r["distance"])]
    return {
        "runs": len(runs),
        "snapshots_per_run": [len(rr) for rr in per_run],
        "ensemble_accuracy": sum(f["ensemble_accuracy"] for f in finals) / len(finals),
        "ensemble_nll": sum(f["ensemble_nll"] for f in finals) / len(finals),
        "snapshot_accuracy": sum(r["accuracy"] for r in rows) / len(rows),
        "mean_distance": sum(dists) / len(dists) if dists else None,
    }
