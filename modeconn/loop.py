"""The one resumable training loop: endpoints, curves, FGE and SSE all train through :func:`run_epochs`.

A training run is epochs of :func:`modeconn.train.train_epoch` on one :class:`Training` — the module, its
optimiser, its training batches, a loss and a learning rate per iteration. :func:`run_epochs` trains the epochs
a run still lacks and after each one, on rank 0, makes the epoch's row (the caller's measurements added) and
saves the whole state with :meth:`modeconn.resume.ResumeState.epoch_done` (DESIGN decision 8): weights,
optimiser, iteration and every random stream (:func:`modeconn.resume.capture`), the rows so far, the training
time, and what the caller keeps beside (``extra``: e.g. the snapshots taken so far). Given a saved state it
restores all of it first and continues after the saved epoch; on a CPU it ends bit for bit where an
uninterrupted run ends.

In a data-parallel run every process trains; rank 0 alone measures, logs and saves (the others take part in
the save's one collective, which gathers their own random states).

    training = Training(model, optimizer, batches, cross_entropy_step(model), lr_at)
    history = run_epochs(training, epochs, resume=state, saved=state.load())
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from .resume import ResumeState, capture, restore
from .runtime import CPU, Runtime
from .train import Batches, EpochStats, LossFn, train_epoch

log = logging.getLogger(__name__)

Advance = Callable[[str], None]
Progress = Callable[[int], AbstractContextManager[Advance]]
"""``progress(total)``: a context whose value ``advance(message)`` is called once per epoch (e.g. a rich bar)."""


class Stateful(Protocol):
    """What a caller keeps beside the training (snapshots so far, saved checkpoints): saved and restored with it."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


@dataclass
class Training:
    """One module in training: what an epoch steps and what a resume state captures.

    ``batches`` are the training batches (a :class:`modeconn.data.Loader`: its ``generator`` draws the order
    and augmentation); ``generators`` are further random streams of the loss (a curve's t); ``on_step(i)``
    runs after the optimiser step of iteration ``i`` (snapshots). ``iteration`` counts from 1 over the run.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Batches
    loss_fn: LossFn
    lr_at: Callable[[int], float]
    generators: tuple[torch.Generator, ...] = ()
    on_step: Callable[[int], None] | None = None
    what: str = "training"
    iteration: int = 1

    def state_dict(self) -> dict:
        return capture(self.module, self.optimizer, self.iteration, self.batches.generator, *self.generators)

    def load_state_dict(self, state: Mapping) -> None:
        self.iteration = restore(state, self.module, self.optimizer, self.batches.generator, *self.generators)

    def epoch(self, runtime: Runtime = CPU) -> EpochStats:
        """Train one pass over the batches (the module in train mode)."""
        self.module.train()
        stats, self.iteration = train_epoch(
            self.loss_fn,
            self.optimizer,
            self.batches,
            self.lr_at,
            self.iteration,
            runtime,
            on_step=self.on_step,
            what=self.what,
        )
        return stats


@dataclass
class History:
    """What :func:`run_epochs` leaves: the rows of every epoch (rank 0; resumed epochs included), the training
    time of all epochs, and the epoch a saved state had reached (0: trained from the start)."""

    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_after: int = 0

    @property
    def images_per_s(self) -> float:
        """The mean over the epochs of their training throughput."""
        return sum(r["images_per_s"] for r in self.rows) / len(self.rows)

    def timing(self) -> dict:
        """How it ran (rank 0): the epoch a saved state had reached, the training time, per epoch, the mean
        throughput."""
        seconds, per_epoch = self.seconds, self.seconds / len(self.rows)
        return {
            "resumed_after_epoch": self.resumed_after,
            "seconds": seconds,
            "seconds_per_epoch": per_epoch,
            "images_per_s": self.images_per_s,
        }


def run_epochs(
    training: Training,
    epochs: int,
    *,
    runtime: Runtime = CPU,
    resume: ResumeState | None = None,
    saved: Mapping | None = None,
    offset: int = 0,
    measure: Callable[[int, EpochStats], dict] | None = None,
    extra: Stateful | None = None,
    report: Callable[[dict], None] | None = None,
) -> History:
    """Train epochs ``offset + 1 … offset + epochs`` of ``training``, continuing ``saved`` where given.

    ``saved`` is what ``resume.load()`` returned (the training, rows, time and ``extra`` are restored from it,
    and the epochs up to its ``epoch`` are not trained again). After each epoch, on rank 0, ``measure(epoch,
    stats)`` returns the caller's measurements (e.g. test accuracy), added to the epoch's row ``{epoch, lr,
    train_loss, train_accuracy, …, seconds, images_per_s}``; then every process calls ``resume.epoch_done``
    (rank 0 saves the training, the rows, the time and ``extra``); then ``report(row)`` (rank 0: progress).
    ``offset`` places this run in the count of a state several runs share (the epochs of the runs before it).
    """
    history, done = History(), offset
    if saved is not None:
        training.load_state_dict(saved)
        history.rows, history.seconds, done = list(saved["rows"]), saved["seconds"], int(saved["epoch"])
        if extra is not None:
            extra.load_state_dict(saved)
        history.resumed_after = done
        log.info("%s: resuming after epoch %d", training.what, done)
    for epoch in range(done + 1, offset + epochs + 1):
        stats = training.epoch(runtime)
        history.seconds += stats.seconds
        if not runtime.is_main:  # rank 0 measures, logs and saves; the others only train
            if resume is not None:
                resume.epoch_done(epoch, {})
            continue
        row = {
            "epoch": epoch,
            "lr": training.lr_at(training.iteration - 1),
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            **(measure(epoch, stats) if measure is not None else {}),
            "seconds": history.seconds,
            "images_per_s": stats.images_per_s,
        }
        history.rows.append(row)
        if resume is not None:
            state = {**training.state_dict(), "rows": history.rows, "seconds": history.seconds}
            resume.epoch_done(epoch, {**state, **(extra.state_dict() if extra is not None else {})})
        if report is not None:
            report(row)
    return history


@contextlib.contextmanager
def advancing(progress: Progress | None, total: int) -> Iterator[Advance]:
    """``progress(total)``'s advance, or one that does nothing without ``progress``."""
    if progress is None:
        yield lambda message="": None
    else:
        with progress(total) as advance:
            yield advance
