"""Learning-rate schedules of the paper, as pure functions of the iteration.

- :func:`standard_lr` — the schedule of the endpoints and of FGE's pretraining
  (Sec. 5, after Izmailov et al.): constant for the first 50% of the budget,
  linear decay to 1% of the initial rate at 90%, then constant.
- :func:`fge_lr` — Fast Geometric Ensembling's piecewise-linear cyclical rate
  (Sec. 5, Eq. for α(i)): from ``lr_1`` down to ``lr_2`` in the first half of a
  cycle of ``c`` iterations, back up in the second; a snapshot is taken at the
  minimum, ``t(i) = 1/2``.
- :func:`sse_lr` — Snapshot Ensembles' cosine annealing with warm restarts
  (Huang et al. 2017): ``α0/2 · (cos(π · mod(i−1, ⌈T/M⌉) / ⌈T/M⌉) + 1)``.

Iterations ``i`` count from 1, as in the paper's formulas.
"""

from __future__ import annotations

import math


def standard_lr(progress: float, lr: float) -> float:
    """The standard schedule at ``progress`` ∈ [0, 1] (fraction of the training budget done).

    Smooth per iteration: callers pass ``(iteration) / (total iterations)``.
    """
    if progress <= 0.5:
        return lr
    if progress <= 0.9:
        return lr * (1.0 - 0.99 * (progress - 0.5) / 0.4)
    return 0.01 * lr


def fge_t(i: int, cycle: int) -> float:
    """Position ``t(i) = (mod(i − 1, c) + 1) / c`` ∈ (0, 1] of iteration ``i`` in its cycle."""
    return ((i - 1) % cycle + 1) / cycle


def fge_lr(i: int, cycle: int, lr_1: float, lr_2: float) -> float:
    """FGE's learning rate at iteration ``i`` (from 1) with a cycle of ``cycle`` iterations."""
    t = fge_t(i, cycle)
    if t <= 0.5:
        return (1.0 - 2.0 * t) * lr_1 + 2.0 * t * lr_2
    return (2.0 - 2.0 * t) * lr_2 + (2.0 * t - 1.0) * lr_1


def fge_is_snapshot(i: int, cycle: int) -> bool:
    """True at the iterations where FGE collects a snapshot: the LR minimum, ``t(i) = 1/2``."""
    return 2 * ((i - 1) % cycle + 1) == cycle


def sse_lr(i: int, total: int, cycles: int, lr: float) -> float:
    """Snapshot Ensembles' rate at iteration ``i`` (from 1) of ``total`` in ``cycles`` cycles."""
    period = math.ceil(total / cycles)
    return lr / 2.0 * (math.cos(math.pi * ((i - 1) % period) / period) + 1.0)


def sse_is_snapshot(i: int, total: int, cycles: int) -> bool:
    """True at the last iteration of each SSE cycle (and at the last iteration overall)."""
    period = math.ceil(total / cycles)
    return i % period == 0 or i == total
