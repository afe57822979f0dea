"""Fitting a curve between two networks (paper, Sec. 3.2).

The endpoints stay fixed; the interior bends θ are trained by SGD on

    ℓ(θ) = E_{t ~ U(0, 1)} [ L(φ_θ(t)) ] + 0.5 · wd · ‖φ_θ(t)‖²,

with a fresh t per minibatch (:func:`modeconn.curves.curve_loss`, an unbiased estimate of the gradient), under
the standard learning-rate schedule of endpoint training (:func:`modeconn.schedules.standard_lr`). The weight
decay acts on φ_θ(t), not on θ, so the optimiser's own is 0. The run resumes through
:func:`modeconn.loop.run_epochs` (the t stream included).
"""

from __future__ import annotations

import torch

from . import schedules
from .curves import Curve, curve_loss
from .loop import History, Progress, Training, advancing, run_epochs
from .resume import ResumeState
from .runtime import CPU, Runtime
from .train import Batches, make_sgd


def fit_curve(
    curve: Curve,
    batches: Batches,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    wd: float,
    seed: int,
    runtime: Runtime = CPU,
    resume: ResumeState | None = None,
    progress: Progress | None = None,
) -> History:
    """Train the bends of ``curve`` (placed by ``runtime.prepare``) for ``epochs`` on ``batches``; the t of each
    minibatch comes from a generator seeded with ``seed`` (the same on every process of a data-parallel run).

    Returns the per-epoch rows (training loss and accuracy at random t) and the training time. With ``resume``
    every epoch's state is saved and a saved state is continued; ``progress(total)`` is advanced once per epoch.
    """
    optimizer = make_sgd([curve.bends], lr, momentum, 0.0)  # wd acts on φ(t), not θ
    total = epochs * len(batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, lr)  # noqa: E731
    generator = torch.Generator().manual_seed(seed)  # the t of each minibatch
    step = curve_loss(curve, wd, generator, module=runtime.wrap(curve))  # data-parallel under torchrun
    training = Training(curve, optimizer, batches, step, lr_at, (generator,), what="curve training")
    saved = resume.load() if resume is not None else None

    def report(row: dict) -> None:
        advance(
            f"loss at random t {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} {row['images_per_s']:.0f} img/s"
        )

    done = int(saved["epoch"]) if saved is not None else 0
    with advancing(progress, epochs - done) as advance:
        return run_epochs(training, epochs, runtime=runtime, resume=resume, saved=saved, report=report)
