"""Snapshot Ensembles (Huang et al. 2017), the paper's baseline in Sec. 5.

One run from scratch over ``epochs`` with ``cycles`` cosine cycles with warm restarts
(:func:`modeconn.schedules.sse_lr`), a snapshot at the end of each (:mod:`modeconn.snapshots`). Because every
cycle restarts the learning rate, the first k cycles of a run are exactly an SSE run of that length: the
snapshots within each budget come from this one run.
"""

from __future__ import annotations

from torch import nn

from . import schedules
from .snapshots import RunPlan
from .train import Batches, make_sgd


def sse_schedule(total_iters: int, cycles: int, lr: float):
    """(lr_at, is_snapshot) of Snapshot Ensembles over ``total_iters`` in ``cycles`` cycles."""
    return (
        lambda i: schedules.sse_lr(i, total_iters, cycles, lr),
        lambda i: schedules.sse_is_snapshot(i, total_iters, cycles),
    )


def plan(
    model: nn.Module, batches: Batches, *, seed: int, epochs: int, cycles: int, lr: float, momentum: float, wd: float
) -> RunPlan:
    """The one run of a Snapshot Ensemble, for :func:`modeconn.snapshots.train_runs`: ``model`` (freshly built and
    placed by ``runtime.prepare``; ``seed`` names the run) trained on ``batches`` for ``epochs`` in ``cycles``
    cycles from ``lr``, a snapshot at the end of each cycle."""

    def make():
        lr_at, is_snap = sse_schedule(epochs * len(batches), cycles, lr)
        return model, make_sgd(model.parameters(), lr, momentum, wd), batches, lr_at, is_snap

    return RunPlan(seed, 0, make)
