"""Fast Geometric Ensembling (paper, Sec. 5).

FGE starts from a network pretrained with the standard schedule (an endpoint's checkpoint at some epoch, its
optimiser's momentum with it) and cycles the learning rate linearly between ``lr_1`` and ``lr_2`` over cycles
of ``c`` iterations (:func:`modeconn.schedules.fge_lr`), with a snapshot at each minimum, the middle of each
cycle (:mod:`modeconn.snapshots`). Each run also averages its snapshots' weights into one network (SWA,
Izmailov et al. 2018; :mod:`modeconn.swa`), and measures the network it starts from before any step, so that
what FGE adds is read off one result (paper, Sec. 6.4: ImageNet top-1 error 23.87% of the pretrained ResNet-50
→ 23.31% after 5 FGE epochs). Runs are independent; a run from a checkpoint at epoch ``start_epoch`` costs
``start_epoch + epochs`` epochs, pretraining included (Sec. 5's budgets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import schedules
from .io import build_from_checkpoint
from .runtime import CPU, Runtime, derived_seed, seed_everything
from .snapshots import RunPlan, runs_summary, start_summary
from .swa import swa_summary
from .train import Batches, make_sgd


def cycle_iterations(cycle_epochs: float, iters_per_epoch: int) -> int:
    """A cycle of ``cycle_epochs`` in iterations, rounded to an even number ≥ 2 (the snapshot sits mid-cycle)."""
    c = max(2, round(cycle_epochs * iters_per_epoch))
    return c + (c % 2)


def snapshot_count(cycle_iters: int, total_iters: int) -> int:
    """How many FGE snapshots (LR minima, iterations ``c/2 + k·c``) a run of ``total_iters`` iterations takes."""
    half = cycle_iters // 2
    return 0 if total_iters < half else (total_iters - half) // cycle_iters + 1


def settings_warnings(
    cycle: float, epochs: int, iters_per_epoch: int, names: tuple[str, str] = ("cycle", "epochs")
) -> list[str]:
    """Settings that do nothing useful, one line each: a ``cycle`` (epochs) that takes fewer than two snapshots in
    a run of ``epochs`` epochs of ``iters_per_epoch`` iterations (its ensemble is one network, the same as its SWA
    average). ``names``: what the lines call the cycle and the epochs (e.g. the settings that set them)."""
    count = snapshot_count(cycle_iterations(cycle, iters_per_epoch), epochs * iters_per_epoch)
    if count >= 2:
        return []
    c, e = names
    return [
        f"{c} = {cycle} with {e} = {epochs} ({iters_per_epoch} iterations per epoch) takes "
        f"{count} snapshot per run: its FGE ensemble is one network, the same as its SWA average, and there is no "
        f"distance between snapshots; use a cycle of at most 2/3 of {e} (e.g. 0.5) or more {e}"
    ]


def fge_schedule(cycle_iters: int, lr_1: float, lr_2: float):
    """(lr_at, is_snapshot) of FGE for a cycle of ``cycle_iters`` iterations."""
    return (lambda i: schedules.fge_lr(i, cycle_iters, lr_1, lr_2), lambda i: schedules.fge_is_snapshot(i, cycle_iters))


def start_optimizer(model: nn.Module, checkpoint: dict, lr_1: float, momentum: float, wd: float) -> torch.optim.SGD:
    """SGD over ``model`` at ``lr_1``; where ``checkpoint`` keeps the pretraining's optimiser, its state
    (momentum) is continued, as the paper's code does, with this run's rate, momentum and weight decay."""
    optimizer = make_sgd(model.parameters(), lr_1, momentum, wd)
    if "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:
            group.update(lr=lr_1, momentum=momentum, weight_decay=wd)
    return optimizer


def plans(
    checkpoints: Sequence[dict],
    seeds: Sequence[int],
    batches: Callable[[int], Batches],
    *,
    seed: int,
    start_epoch: int,
    cycle: float,
    lr_1: float,
    lr_2: float,
    momentum: float,
    wd: float,
    runtime: Runtime = CPU,
) -> list[RunPlan]:
    """One FGE run from each checkpoint (``{"spec", "state_dict"[, "optimizer"]}``, at epoch ``start_epoch`` of
    its pretraining), run ``r`` named by ``seeds[r]``, for :func:`modeconn.snapshots.train_runs` (with
    ``evaluate_start``: the network each run starts from; with ``swa_batches``: its snapshots averaged).

    Run ``r`` seeds everything with ``derived_seed(seed, seeds[r])``, builds its network from the checkpoint and
    trains on ``batches(run_seed)`` (a shuffling :class:`modeconn.data.Loader`) with a cycle of ``cycle`` epochs.
    """

    def plan(run_id: int, checkpoint: dict) -> RunPlan:
        record = {"cycle_iterations": 0, "momentum_from_checkpoint": "optimizer" in checkpoint}

        def make():
            run_seed = derived_seed(seed, run_id)
            seed_everything(run_seed)
            model = runtime.prepare(build_from_checkpoint(checkpoint))
            train_b = batches(run_seed)
            record["cycle_iterations"] = cycle_iterations(cycle, len(train_b))
            lr_at, is_snap = fge_schedule(record["cycle_iterations"], lr_1, lr_2)
            return model, start_optimizer(model, checkpoint, lr_1, momentum, wd), train_b, lr_at, is_snap

        return RunPlan(run_id, start_epoch, make, record)

    return [plan(s, c) for s, c in zip(seeds, checkpoints, strict=True)]


def starts(runs: list[dict]) -> dict:
    """What the runs of :func:`modeconn.snapshots.train_runs` started from: whether every run continued its
    checkpoint's momentum, and each run's start network's scores (with ``evaluate_start``; its seed otherwise)."""
    return {
        "momentum_from_checkpoint": all(r["momentum_from_checkpoint"] for r in runs),
        "start": [{"seed": r["seed"], **(r.get("start") or {})} for r in runs],
    }


def summary(runs: list[dict], rows: list[dict], labels: torch.Tensor, val_labels: torch.Tensor | None = None) -> dict:
    """FGE's numbers over its runs: the ensembles and snapshots (:func:`modeconn.snapshots.runs_summary`), the
    start networks (``start_*``) and the SWA networks (``swa_*``)."""
    return {**runs_summary(rows), **start_summary(runs), **swa_summary(runs, labels, val_labels)}
