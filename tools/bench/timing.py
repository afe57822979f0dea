"""The timed work: training runs and steps (plain and curve), an inference pass, a BatchNorm recalibration and
one evaluation point of a curve."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator

import torch
from torch import nn

from modeconn.bn import recalibrate
from modeconn.curves import Curve, curve_loss
from modeconn.errors import ConfigError
from modeconn.points import measure
from modeconn.runtime import Runtime
from modeconn.train import cross_entropy_step, make_sgd, predict, train_epoch
from tools.official_loops import warm_then_time

from .settings import BATCH, WARMUP, Batches


def forever(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch after epoch of ``batches`` (each pass reshuffles)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ConfigError(f"the training split gives no full batch of {BATCH} images; use a larger dataset")


class Trainer:
    """A loss, its optimiser and its batches; ``run(n)`` trains n batches after a warm-up, returns images/s.

    Each run opens its own stream and closes it at the end, so a DataLoader's workers start in the
    warm-up (untimed) and are gone before the next measurement.
    """

    def __init__(
        self,
        loss_fn,
        optimizer: torch.optim.Optimizer,
        batches: Batches,
        runtime: Runtime,
        module: nn.Module,
        what: str,
        warmup: int = WARMUP,
    ):
        self.loss_fn, self.optimizer, self.batches, self.runtime = loss_fn, optimizer, batches, runtime
        self.module, self.what, self.warmup = module, what, warmup
        self.iteration = 1

    def _train(self, stream: Iterator, n: int) -> float:
        lr = self.optimizer.param_groups[0]["lr"]
        stats, self.iteration = train_epoch(
            self.loss_fn,
            self.optimizer,
            itertools.islice(stream, n),
            lambda i: lr,
            self.iteration,
            self.runtime,
            what=self.what,
        )
        return stats.images_per_s  # train_epoch ends with .item(): the device has finished

    def run(self, n: int) -> float:
        return warm_then_time(self.module, forever(self.batches), self._train, self.warmup, n)


def interleaved_steps(trainers: list[Trainer], n: int, runtime: Runtime) -> list[float]:
    """Median seconds per training step of each trainer, their steps interleaved one by one.

    ``n`` steps each after ``WARMUP`` untimed ones; a step is what ``train_epoch`` does per batch (forward
    under the runtime's autocast, zero_grad, backward, optimiser step), timed without fetching its batch.
    Interleaving step by step pairs the two far more tightly than two runs one after the other: a slower
    second on a shared machine hits both alike, and the medians drop the outliers.
    """
    streams = [forever(t.batches) for t in trainers]
    times: list[list[float]] = [[] for _ in trainers]
    for t in trainers:
        t.module.train()
    try:
        for i in range(WARMUP + n):
            for k, (t, stream) in enumerate(zip(trainers, streams)):
                x, y = next(stream)
                runtime.synchronize()
                start = time.perf_counter()
                with runtime.autocast():
                    loss, _ = t.loss_fn(x, y)
                t.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t.optimizer.step()
                runtime.synchronize()
                if i >= WARMUP:
                    times[k].append(time.perf_counter() - start)
    finally:
        for stream in streams:
            stream.close()
    return [statistics.median(ts) for ts in times]


def eval_speed(model: nn.Module, batches: Batches, runtime: Runtime, max_batches: int) -> float:
    """Images/s of one inference pass, timed from the start of iteration (worker start-up included)."""
    model.eval()
    runtime.synchronize()
    start = time.perf_counter()
    _, labels = predict(model, itertools.islice(batches, max_batches), runtime)
    return labels.numel() / (time.perf_counter() - start)


def bn_seconds(model: nn.Module, batches: Batches, runtime: Runtime) -> float:
    runtime.synchronize()
    start = time.perf_counter()
    recalibrate(model, batches, runtime=runtime)
    runtime.synchronize()
    return time.perf_counter() - start


def point_speed(curve: Curve, t: float, batches, runtime: Runtime) -> float:
    """Images/s of one evaluation point: φ_θ(t), BN recalibration there, then the evaluation passes."""
    images = batches.bn.n + batches.train.n + batches.test.n
    runtime.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        weights = {k: v.detach() for k, v in curve.weights(t).items()}
    measure(curve.template, weights, batches, runtime)  # ends with the predictions on the CPU
    return images / (time.perf_counter() - start)


def bends(curve: Curve) -> list[nn.Parameter]:
    """What a curve trains: its interior bends (the template's own parameters are frozen)."""
    return [p for p in curve.parameters() if p.requires_grad]


def plain_training(
    model: nn.Module,
    lr: float,
    momentum: float,
    wd: float,
    batches: Batches,
    runtime: Runtime,
    what: str,
    warmup: int = WARMUP,
) -> Trainer:
    """Plain training as train_endpoint does it: cross-entropy, SGD with weight decay over every parameter."""
    return Trainer(
        cross_entropy_step(model), make_sgd(model.parameters(), lr, momentum, wd), batches, runtime, model, what, warmup
    )


def curve_training(
    curve: Curve,
    wd: float,
    lr: float,
    momentum: float,
    seed: int,
    batches: Batches,
    runtime: Runtime,
    what: str,
    warmup: int = WARMUP,
) -> Trainer:
    """Curve training as fit_curve does it: only the bends train (SGD without weight decay), wd acts on φ_θ(t)."""
    return Trainer(
        curve_loss(curve, wd, torch.Generator().manual_seed(seed)),
        make_sgd(bends(curve), lr, momentum, 0.0),
        batches,
        runtime,
        curve.template,
        what,
        warmup=warmup,
    )
