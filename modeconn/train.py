"""One training epoch and one evaluation pass.

:func:`train_epoch` serves every kind of training in the paper — endpoints, curves,
FGE, SSE — because each supplies only a ``loss_fn(x, y) -> (loss, logits)``
and a learning rate per iteration; :mod:`modeconn.loop` runs the epochs of a
run and resumes it. Data comes from the in-memory
:class:`modeconn.data.Loader`; no per-sample Python runs here.

Where and how the passes run (device, bf16 autocast, memory format) is the
caller's :class:`modeconn.runtime.Runtime`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError, TrainingError
from .runtime import CPU, Runtime

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Forward = Callable[[torch.Tensor], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    n: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epoch(
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    lr_at: Callable[[int], float],
    iteration: int,
    runtime: Runtime = CPU,
    on_step: Callable[[int], None] | None = None,
    what: str = "training",
) -> tuple[EpochStats, int]:
    """One pass over ``batches``; returns the epoch's mean loss/accuracy and the next iteration.

    ``iteration`` counts from 1 over the whole run; ``lr_at(i)`` gives the rate of
    iteration ``i``. ``on_step(i)`` runs after the optimiser step of iteration
    ``i`` (FGE/SSE take snapshots there). Raises :class:`TrainingError` if the
    loss becomes NaN or infinite, and :class:`ConfigError` if ``batches`` holds no batch (a batch size
    larger than the training set, whose one incomplete batch is dropped).
    """
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    n = 0
    for x, y in batches:
        set_lr(optimizer, lr_at(iteration))
        with runtime.autocast():
            loss, logits = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        n += y.shape[0]
        if iteration % 50 == 0 and not torch.isfinite(loss_sum):
            raise TrainingError(_nan_message(what, iteration, lr_at(iteration)))
        if on_step is not None:
            on_step(iteration)
        iteration += 1
    # Over all processes of a data-parallel run: one reduction per epoch.
    totals = runtime.all_sum(
        torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(n), device=runtime.device)])
    )
    n = int(totals[2].item())
    if n == 0:  # no process had a batch (each has as many as the others)
        raise ConfigError(_no_batches_message(what, batches))
    mean_loss = (totals[0] / totals[2]).item()
    if not math.isfinite(mean_loss):
        raise TrainingError(_nan_message(what, iteration - 1, lr_at(iteration - 1)))
    return EpochStats(mean_loss, totals[1].item() / n, n, time.perf_counter() - start), iteration


def _no_batches_message(what: str, batches: Batches) -> str:
    size, n = getattr(batches, "batch_size", None), getattr(batches, "n", None)
    if size is not None and n is not None:
        return (
            f"{what}: an epoch of no batches: the batch size {size} is larger than the {n} training images "
            "(the last incomplete batch is dropped); use a batch size of at most the number of training images"
        )
    return f"{what}: an epoch of no batches (no training data, or a batch larger than the training set)"


def _nan_message(what: str, iteration: int, lr: float) -> str:
    return (
        f"{what} diverged: the loss became NaN or infinite by iteration {iteration} (lr {lr:g}). "
        "Lower the learning rate or check the data; nothing was written."
    )


@torch.no_grad()
def predict(
    forward: Forward, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], runtime: Runtime = CPU
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [N, K] (float32, on CPU) and labels [N] of a pass over ``batches``."""
    outs, labels = [], []
    for x, y in batches:
        with runtime.autocast():
            logits = forward(x)
        outs.append(F.log_softmax(logits.float(), dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def make_sgd(params, lr: float, momentum: float, wd: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)


def cross_entropy_step(model: torch.nn.Module) -> LossFn:
    """The plain supervised loss: cross-entropy of ``model(x)``."""

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float(), y), logits

    return loss_fn
