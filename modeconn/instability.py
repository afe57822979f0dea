"""The instability analysis (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis", ICML 2020, Sec. 3): from which step on is training stable to SGD noise?

A parent network is trained from its initialisation W_0 for k iterations, to W_k. Two copies of W_k (weights
and optimiser state: momentum) train on to the end, iteration T, with different SGD noise: each draws its own
data order and augmentation, W_k → W_T¹ and W_k → W_T². Their instability is the error barrier height along
the straight segment between them (:func:`modeconn.barriers.barrier_mean_ends`)::

    ε(k) = max_α E((1 − α) W_T¹ + α W_T²) − ½ (E(W_T¹) + E(W_T²)),     α on a grid of [0, 1]

with E the test error (BatchNorm recalibrated at every α: :func:`modeconn.path.measure_path`). Training is
*stable* at k when ε(k) < 2% (:func:`modeconn.barriers.is_stable`); at k = 0 the two children share only their
initialisation. :func:`instability` measures ε on a grid of k for several parent seeds; :func:`summarize` gives
the mean ± std over seeds per k and :func:`stable_from` the first k whose mean barrier is below 2%.

Steps count iterations, as the paper's k does, not epochs: the parent stops inside an epoch. The training
batches (a :class:`modeconn.data.Loader`) make every random draw of an epoch when the epoch starts, from their
``generator``; a run stopped after batch j of an epoch keeps the generator's state from before that epoch, so
the epoch is drawn again when the run goes on and its first j batches are skipped (:func:`train_to`). Going on
with the parent's own generator ends bit for bit where the uninterrupted run ends; a child goes on with a
generator of its own seed: a new draw of the rest of the epoch and of every later one. Each pass trains through
:meth:`modeconn.loop.Training.epoch`, the loop every training in modeconn uses, with the endpoints' schedule
(:func:`modeconn.schedules.standard_lr` over the T iterations, SGD with momentum and weight decay).

    table = instability(make_model, batches, eval_batches, ks=[0, 8, 64, 512], seeds=[0, 1], epochs=2, lr=0.05,
                        momentum=0.9, wd=5e-4)
    summarize(table); stable_from(table)
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import schedules
from .barriers import STABLE_BELOW, barrier_mean_ends, is_stable
from .data import EvalBatches
from .errors import ConfigError
from .loop import Training
from .path import measure_path
from .runtime import CPU, Runtime, derived_seed, seed_everything
from .train import Batches, cross_entropy_step, make_sgd

log = logging.getLogger(__name__)

CHILDREN = 2
COLUMNS = ("k", "epoch", "seed", "test_error_1", "test_error_2", "test_barrier", "train_barrier", "distance", "stable")


@dataclass(frozen=True)
class Schedule:
    """What the parent and its children share: T = ``epochs`` · (batches per epoch) iterations of SGD (momentum,
    weight decay) at the endpoints' learning rate schedule from ``lr``."""

    epochs: int
    lr: float
    momentum: float
    wd: float

    def total(self, batches: Batches) -> int:
        """T, the iterations of the whole run."""
        return self.epochs * len(batches)  # type: ignore[arg-type]


class _Steps:
    """Batches ``skip`` … ``skip + take − 1`` of the epoch ``batches`` draws next. Unless that finishes the epoch,
    the generator is put back to its state before the epoch's draws: the run goes on inside the same epoch."""

    def __init__(self, batches: Batches, skip: int, take: int):
        self.batches, self.skip, self.take = batches, skip, take
        self.generator = batches.generator  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return self.take

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self.generator.get_state()
        yield from itertools.islice(self.batches, self.skip, self.skip + self.take)
        if self.skip + self.take < len(self.batches):  # type: ignore[arg-type]
            self.generator.set_state(start)


def start(model: nn.Module, batches: Batches, schedule: Schedule, runtime: Runtime = CPU) -> Training:
    """A run of ``schedule`` at iteration 1: ``model`` (placed by ``runtime.prepare``), its SGD optimiser, the
    training ``batches`` (whose ``generator`` draws the data order and augmentation)."""
    total = schedule.total(batches)
    if total < 1:
        raise ConfigError("instability: the run has no iterations (epochs and batches per epoch must be positive)")
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, schedule.lr)  # noqa: E731
    optimizer = make_sgd(model.parameters(), schedule.lr, schedule.momentum, schedule.wd)
    return Training(model, optimizer, batches, cross_entropy_step(runtime.wrap(model)), lr_at, what="instability")


def train_to(training: Training, stop: int, runtime: Runtime = CPU) -> Training:
    """Train iterations ``training.iteration`` … ``stop − 1`` (from 1; T + 1 ends the run), stopping and starting
    inside epochs where the steps fall (the generator then holds the state from before the current epoch)."""
    batches = training.batches
    n = len(batches)  # type: ignore[arg-type]
    try:
        while training.iteration < stop:
            skip = (training.iteration - 1) % n
            training.batches = _Steps(batches, skip, min(n - skip, stop - training.iteration))
            training.epoch(runtime)
    finally:
        training.batches = batches
    return training


def spawn(parent: Training, schedule: Schedule, seed: int | None, runtime: Runtime = CPU) -> Training:
    """A child of ``parent`` at its current iteration: a copy of its weights, buffers and optimiser state, going
    on with a data order and augmentation of its own, drawn from ``seed`` (``None``: the parent's own, from the
    state the parent's generator holds: the run the parent would have gone on with)."""
    module = copy.deepcopy(parent.module)
    generator = torch.Generator()
    if seed is None:
        generator.set_state(parent.batches.generator.get_state())  # type: ignore[attr-defined]
    else:
        generator.manual_seed(seed)
    batches = copy.copy(parent.batches)  # the same images, a generator of its own
    batches.generator = generator  # type: ignore[attr-defined]
    child = start(module, batches, schedule, runtime)
    child.optimizer.load_state_dict(copy.deepcopy(parent.optimizer.state_dict()))  # momentum: not shared
    child.iteration = parent.iteration
    return child


@dataclass
class Pair:
    """The two children of one parent at step k: their final parameters and the segment measured between them."""

    k: int
    seed: int
    children: tuple[nn.Module, ...]
    path: pd.DataFrame  # one row per α (column t): modeconn.points.MEASURES, …
    distance: float  # ‖W_T¹ − W_T²‖ (all parameters)

    def row(self, batches_per_epoch: int, threshold: float = STABLE_BELOW) -> dict:
        test, train = self.path["test_error"].tolist(), self.path["train_error"].tolist()
        barrier = barrier_mean_ends(test)
        return {
            "k": self.k,
            "epoch": self.k / batches_per_epoch,
            "seed": self.seed,
            "test_error_1": test[0],
            "test_error_2": test[-1],
            "test_barrier": barrier,
            "train_barrier": barrier_mean_ends(train),
            "distance": self.distance,
            "stable": is_stable(barrier, threshold),
        }


def children_at(
    model_fn: Callable[[], nn.Module],
    batches: Batches,
    eval_batches: EvalBatches,
    k: int,
    seed: int,
    schedule: Schedule,
    *,
    num_points: int = 11,
    runtime: Runtime = CPU,
) -> Pair:
    """Train a parent of ``seed`` (its initialisation ``model_fn()`` and its data order seeded
    ``derived_seed(seed, 0)``) to step ``k``, two children from there to the end (data orders ``derived_seed(seed,
    1)``, ``…(seed, 2)``: no stream is shared by two seeds' runs) and measure the segment between them at
    ``num_points`` α (BatchNorm recalibrated at each)."""
    total = schedule.total(batches)
    if not 0 <= k <= total:
        raise ConfigError(f"instability: k = {k} is outside 0 … {total}, the iterations of the run")
    if num_points < 2:
        raise ConfigError(f"instability: num_points must be at least 2 (the segment's ends), got {num_points}")
    seed_everything(derived_seed(seed, 0))  # 0: the parent; 1, 2: its children (no stream shared across seeds)
    batches = copy.copy(batches)
    batches.generator = torch.Generator().manual_seed(derived_seed(seed, 0))  # type: ignore[attr-defined]
    parent = train_to(start(runtime.prepare(model_fn()), batches, schedule, runtime), k + 1, runtime)
    children = []
    for c in range(1, CHILDREN + 1):
        seed_everything(derived_seed(seed, c))  # per-sample noise (dropout) of the child's own
        children.append(train_to(spawn(parent, schedule, derived_seed(seed, c), runtime), total + 1, runtime).module)
    ends = [{name: p.detach().clone() for name, p in child.named_parameters()} for child in children]
    template = copy.deepcopy(children[0])

    def point(t: float) -> dict[str, torch.Tensor]:
        return {name: torch.lerp(ends[0][name], ends[1][name], t) for name in ends[0]}

    ts = np.linspace(0.0, 1.0, num_points).tolist()
    path = measure_path(template, point, ts, eval_batches, runtime, wd=schedule.wd)
    distance = math.sqrt(sum(float((ends[0][n] - ends[1][n]).double().pow(2).sum()) for n in ends[0]))
    return Pair(k, seed, tuple(children), path.rows, distance)


def instability(
    model_fn: Callable[[], nn.Module],
    batches: Batches,
    eval_batches: EvalBatches,
    ks: Sequence[int],
    seeds: Sequence[int],
    schedule: Schedule,
    *,
    num_points: int = 11,
    runtime: Runtime = CPU,
    threshold: float = STABLE_BELOW,
) -> pd.DataFrame:
    """One row per (k, parent seed) (:data:`COLUMNS`): the children's test errors, the error barrier heights on
    test and train, their distance and the verdict at ``threshold``. See :func:`children_at`."""
    rows = []
    for k, seed in itertools.product(ks, seeds):
        pair = children_at(model_fn, batches, eval_batches, k, seed, schedule, num_points=num_points, runtime=runtime)
        rows.append(pair.row(len(batches), threshold))  # type: ignore[arg-type]
        log.info("k %d seed %d: test error barrier %.4f", k, seed, rows[-1]["test_barrier"])
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summarize(table: pd.DataFrame, threshold: float = STABLE_BELOW) -> pd.DataFrame:
    """Per k (ascending): the seeds, the mean and standard deviation (ddof 1; 0 for one seed) over parent seeds of
    the test and train error barriers and of the children's test error, and whether the mean barrier is below
    ``threshold``."""
    if table.empty:
        raise ValueError("instability: no rows to summarise")
    error = table[["test_error_1", "test_error_2"]].mean(axis=1)
    grouped = table.assign(test_error=error).groupby("k", sort=True)
    out = pd.DataFrame(
        {
            "epoch": grouped["epoch"].first(),
            "seeds": grouped["seed"].count(),
            "test_barrier_mean": grouped["test_barrier"].mean(),
            "test_barrier_std": grouped["test_barrier"].std(ddof=1).fillna(0.0),
            "train_barrier_mean": grouped["train_barrier"].mean(),
            "train_barrier_std": grouped["train_barrier"].std(ddof=1).fillna(0.0),
            "test_error_mean": grouped["test_error"].mean(),
        }
    ).reset_index()
    out["stable"] = out["test_barrier_mean"] < threshold
    return out


def stable_from(table: pd.DataFrame, threshold: float = STABLE_BELOW) -> int | None:
    """The first k whose mean test error barrier over seeds is below ``threshold`` (Frankle et al.'s onset of
    stability), or None where no k of the table is stable."""
    summary = summarize(table, threshold)
    stable = summary.loc[summary["stable"], "k"]
    return int(stable.iloc[0]) if len(stable) else None


def markdown(summary: pd.DataFrame, threshold: float = STABLE_BELOW) -> str:
    """The summary as a Markdown table (barriers and errors in %)."""
    lines = [
        "| k (iterations) | epoch | seeds | test error barrier (%) | train error barrier (%) | test error (%) | "
        f"stable (< {100 * threshold:g}%) |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.k} | {r.epoch:.3g} | {r.seeds} | {100 * r.test_barrier_mean:.2f} ± {100 * r.test_barrier_std:.2f} "
            f"| {100 * r.train_barrier_mean:.2f} ± {100 * r.train_barrier_std:.2f} | {100 * r.test_error_mean:.2f} "
            f"| {'yes' if r.stable else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, path, title: str = "", threshold: float = STABLE_BELOW) -> None:
    """The test (and train) error barrier against k (symmetric log axis: k = 0 at its left end), mean ± std over
    parent seeds, with the stability threshold as a line."""
    import matplotlib.pyplot as plt

    from .plots import save

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("test", "test error barrier"), ("train", "train error barrier")):
        mean, std = 100 * summary[f"{name}_barrier_mean"], 100 * summary[f"{name}_barrier_std"]
        ax.plot(summary["k"], mean, marker="o", label=label)
        ax.fill_between(summary["k"], mean - std, mean + std, alpha=0.2)
    ax.axhline(100 * threshold, color="k", linestyle="--", linewidth=1, label=f"stable below {100 * threshold:g}%")
    ax.set_xscale("symlog", linthresh=1)  # linear in [0, 1], logarithmic above: k = 0 at the left end
    ax.set_xlim(-0.5, 1.5 * max(float(summary["k"].max()), 1.0))
    ax.set_xlabel("k, the parent's training iterations before the children split")
    ax.set_ylabel("error barrier height (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


def verdict(summary: pd.DataFrame, first: int | None, threshold: float = STABLE_BELOW) -> str:
    """One sentence on where training became stable (or that it did not on this grid of k)."""
    if first is None:
        return (
            f"\nNo k of this grid is stable: the mean test error barrier stays at or above {100 * threshold:g}% up to "
            f"k = {int(summary['k'].iloc[-1])}.\n"
        )
    later = summary[summary["k"] > first]
    stays = "and stays below it at every larger k" if bool(later["stable"].all()) else "but not at every larger k"
    epoch = float(summary.loc[summary["k"] == first, "epoch"].iloc[0])
    return (
        f"\nStable from k = {first} iterations (epoch {epoch:.3g}): the first k whose mean test "
        f"error barrier is below {100 * threshold:g}%, {stays}.\n"
    )


def headline(summary: pd.DataFrame, first: int | None) -> dict:
    """The numbers to compare across runs: the first stable k (None: none) and the mean test error barrier at
    the first and the last k of the grid."""
    return {
        "stable_from_k": first,
        "test_barrier_first_k": float(summary["test_barrier_mean"].iloc[0]),
        "test_barrier_last_k": float(summary["test_barrier_mean"].iloc[-1]),
    }
