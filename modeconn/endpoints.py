"""Training an endpoint: one network from its initialisation with the paper's standard schedule (Sec. 5).

SGD with momentum and weight decay; the learning rate is constant for the first 50% of the iterations,
decays linearly to 1% of it by 90%, then stays there (:func:`modeconn.schedules.standard_lr`, per iteration).
After every epoch the network is measured on the test set; at the epochs of ``save_epochs`` its weights and the
optimiser's state (momentum) are kept, where FGE starts (Sec. 5: FGE from a network partly trained with this
schedule). The run resumes through :func:`modeconn.loop.run_epochs`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import ensemble, schedules
from .loop import Progress, Training, advancing, run_epochs
from .resume import ResumeState
from .runtime import CPU, Runtime
from .train import Batches, cross_entropy_step, make_sgd, predict


@dataclass
class TrainedNetwork:
    """A trained network (on rank 0; in a data-parallel run the other processes get ``rows`` empty and no
    predictions): its per-epoch rows, the checkpoints of ``save_epochs`` (``{epoch: {"state_dict",
    "optimizer"}}``), its test (and validation) log-probabilities and labels, the training time."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    rows: list[dict]
    checkpoints: dict[int, dict] = field(default_factory=dict)
    logprobs: torch.Tensor | None = None  # (N_test, K)
    labels: torch.Tensor | None = None  # (N_test,)
    val_logprobs: torch.Tensor | None = None  # (N_val, K); None without a validation split
    val_labels: torch.Tensor | None = None
    seconds: float = 0.0
    images_per_s: float = float("nan")  # mean over the epochs
    resumed_after: int = 0  # the epoch a saved state had reached (0: trained from the start)

    def scores(self) -> dict:
        """The last epoch's training loss and accuracy, the test NLL, accuracy and error (and validation NLL and
        accuracy)."""
        last = self.rows[-1]
        out = {
            "train_loss": last["train_loss"],
            "train_accuracy": last["train_accuracy"],
            "test_nll": last["test_nll"],
            "test_accuracy": last["test_accuracy"],
            "test_error": 1 - last["test_accuracy"],
        }
        if self.val_logprobs is not None:
            out.update(
                val_nll=ensemble.nll(self.val_logprobs, self.val_labels),
                val_accuracy=ensemble.accuracy(self.val_logprobs, self.val_labels),
            )
        return out

    def timing(self) -> dict:
        """How it ran: the epoch a saved state had reached, the training time, the mean throughput."""
        return {"resumed_after_epoch": self.resumed_after, "seconds": self.seconds, "images_per_s": self.images_per_s}


class _Checkpoints:
    """The weights and optimiser state kept at ``save_epochs`` (resumed with the run)."""

    def __init__(self) -> None:
        self.kept: dict[int, dict] = {}

    def keep(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.kept[epoch] = {
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }

    def state_dict(self) -> dict:
        return {"extra": self.kept}

    def load_state_dict(self, state: Mapping) -> None:
        self.kept = state["extra"]


def train_network(
    model: nn.Module,
    batches: Batches,
    test_batches: Iterable,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    wd: float,
    save_epochs: Iterable[int] = (),
    val_batches: Iterable | None = None,
    runtime: Runtime = CPU,
    resume: ResumeState | None = None,
    progress: Progress | None = None,
    what: str = "endpoint training",
) -> TrainedNetwork:
    """Train ``model`` (built and placed by ``runtime.prepare``) for ``epochs`` on ``batches`` with the standard
    schedule from ``lr``; measure it on ``test_batches`` after every epoch and on ``val_batches`` at the end.

    ``batches`` is a shuffling :class:`modeconn.data.Loader` (this process's shard under torchrun); with
    ``resume`` every epoch's state is saved and a saved state is continued. ``progress(total)``, see
    :data:`modeconn.loop.Progress`, is advanced once per epoch.
    """
    optimizer = make_sgd(model.parameters(), lr, momentum, wd)
    total = epochs * len(batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, lr)  # noqa: E731
    step = cross_entropy_step(runtime.wrap(model))  # data-parallel under torchrun
    training = Training(model, optimizer, batches, step, lr_at, what=what)
    saved = resume.load() if resume is not None else None
    checkpoints, save_epochs = _Checkpoints(), set(save_epochs)

    def measure(epoch: int, stats) -> dict:
        model.eval()
        logprobs, y = predict(model, test_batches, runtime)
        if epoch in save_epochs:  # FGE starts here: weights and the optimizer's momentum
            checkpoints.keep(epoch, model, optimizer)
        return {"test_nll": ensemble.nll(logprobs, y), "test_accuracy": ensemble.accuracy(logprobs, y)}

    def report(row: dict) -> None:
        advance(
            f"loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} "
            f"{row['images_per_s']:.0f} img/s"
        )

    done = int(saved["epoch"]) if saved is not None else 0
    with advancing(progress, epochs - done) as advance:
        history = run_epochs(
            training,
            epochs,
            runtime=runtime,
            resume=resume,
            saved=saved,
            measure=measure,
            extra=checkpoints,
            report=report,
        )
    net = TrainedNetwork(model, optimizer, history.rows, seconds=history.seconds, resumed_after=history.resumed_after)
    if not runtime.is_main:
        return net
    model.eval()
    net.logprobs, net.labels = predict(model, test_batches, runtime)
    if val_batches is not None:
        net.val_logprobs, net.val_labels = predict(model, val_batches, runtime)
    net.checkpoints, net.images_per_s = checkpoints.kept, history.images_per_s
    return net
