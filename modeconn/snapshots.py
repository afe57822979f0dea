"""Snapshots of training runs: what FGE and Snapshot Ensembles collect (paper, Sec. 5).

Both are training runs that stop at chosen iterations to record a snapshot's test-set predictions (FGE at each
learning-rate minimum, SSE at the end of each cosine cycle: :mod:`modeconn.fge`, :mod:`modeconn.sse`). A
snapshot records where it was taken (iteration, epoch), its test (and, when there is a validation split,
validation) log-probabilities and its distance in weight space to the previous snapshot (the paper contrasts ≈7
for FGE with ≈40 for SSE on PreResNet-164).

BatchNorm of a snapshot: its predictions are taken with the running statistics its own training left, not
recalibrated. The official code does the same (it records predictions at the learning-rate minimum with no
BN pass), and it is sound here: a snapshot is a point the run has just trained at, with a small learning
rate, so the running averages track its weights; a recalibration pass over the training set per snapshot
would also be extra epochs that the budgets (Sec. 5) would have to count. Points that no run trained at —
curve points, grid points of the plane, SWA averages — are recalibrated (DESIGN decision 2).

:func:`train_runs` trains several runs one after the other on the one resumable loop
(:func:`modeconn.loop.run_epochs`), one resume state for all of them. With ``swa_batches`` a run also keeps the
running mean of its snapshots' weights and, when it ends, evaluates that average as one network, BatchNorm
recalibrated (SWA, Izmailov et al. 2018; :mod:`modeconn.swa`). With ``evaluate_start`` each run's network is
also measured as it starts, before any step (:func:`start_scores`, :func:`start_summary`; FGE: the pretrained
network). :func:`save_snapshots` / :func:`load_snapshots` write and read the runs as one file, the input of the
budget comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import calibration, ensemble
from .errors import CheckpointError, ModeconnError
from .io import atomic_dir, atomic_torch_save, load_file
from .loop import Progress, Training, advancing, run_epochs
from .resume import ResumeState
from .runtime import CPU, Runtime
from .swa import WeightAverage, averaged_model
from .train import cross_entropy_step, predict
from .weights import flat

FORMAT = "modeconn.snapshots/1"


@dataclass
class Snapshot:
    iteration: int
    epoch: float  # epochs into this run
    logprobs: torch.Tensor  # (N_test, K)
    distance: float  # ‖w − w_prev‖ to the previous snapshot (nan for the first)
    val_logprobs: torch.Tensor | None = None  # (N_val, K); None without a validation split


class SnapshotCollector:
    """The snapshots of one run as it trains: pass :meth:`on_step` to :func:`modeconn.train.train_epoch`.

    After every iteration ``i`` with ``is_snapshot(i)`` it records the model's test (and, with ``val_batches``,
    validation) log-probabilities and its distance to the previous snapshot. Its state (snapshots so far, the
    last snapshot's weights) round-trips through :meth:`state_dict` for resuming a run.
    """

    def __init__(
        self,
        model: nn.Module,
        test_batches,
        is_snapshot: Callable[[int], bool],
        iters_per_epoch: int,
        runtime: Runtime = CPU,
        val_batches=None,
        average: bool = False,
    ):
        self.model, self.test_batches, self.is_snapshot = model, test_batches, is_snapshot
        self.iters_per_epoch, self.runtime, self.val_batches = iters_per_epoch, runtime, val_batches
        self.snapshots: list[Snapshot] = []
        self.prev: torch.Tensor | None = None  # (D,) flat weights of the last snapshot
        self.average = WeightAverage() if average else None  # SWA: the running mean of the snapshots' weights

    def on_step(self, i: int) -> None:
        if not self.is_snapshot(i) or not self.runtime.is_main:  # in a data-parallel run rank 0 evaluates
            return
        self.model.eval()
        logprobs, _ = predict(self.model, self.test_batches, self.runtime)
        val_lp = predict(self.model, self.val_batches, self.runtime)[0] if self.val_batches is not None else None
        self.model.train()
        w = flat(dict(self.model.named_parameters()))
        dist = (w - self.prev.to(w.device)).norm().item() if self.prev is not None else float("nan")
        self.prev = w
        if self.average is not None:
            self.average.update(self.model)
        self.snapshots.append(
            Snapshot(iteration=i, epoch=i / self.iters_per_epoch, logprobs=logprobs, distance=dist, val_logprobs=val_lp)
        )

    def state_dict(self) -> dict:
        average = self.average.state_dict() if self.average is not None else None
        return {"snapshots": [vars(s) for s in self.snapshots], "prev": self.prev, "average": average}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = [Snapshot(**s) for s in state["snapshots"]]
        self.prev = state["prev"]
        if self.average is not None:
            if state.get("average") is None and self.snapshots:
                raise ValueError(
                    "the saved run has snapshots but no weight average (saved without SWA): "
                    "delete the resume state to start the run again"
                )
            if state.get("average") is not None:
                self.average.load_state_dict(state["average"])

    def swa(self, bn_batches, runtime: Runtime | None = None) -> dict:
        """The average of the snapshots so far as one network, BatchNorm recalibrated on ``bn_batches`` (the
        un-augmented training set): how many snapshots it averages, the epoch of the last one, its test (and
        validation) log-probabilities."""
        runtime = runtime or self.runtime
        if self.average is None:
            raise ValueError("this collector keeps no weight average: create it with average=True")
        net = averaged_model(self.model, self.average, bn_batches, runtime)
        logprobs, _ = predict(net, self.test_batches, runtime)
        val_lp = predict(net, self.val_batches, runtime)[0] if self.val_batches is not None else None
        return {
            "snapshots": self.average.n,
            "epoch": self.snapshots[-1].epoch,
            "logprobs": logprobs,
            "val_logprobs": val_lp,
        }


def snapshot_rows(
    run: int,
    seed: int,
    snapshots: list[Snapshot],
    labels: torch.Tensor,
    offset: float,
    method: str = "probs",
    val_labels: torch.Tensor | None = None,
) -> list[dict]:
    """One row per snapshot of a run: its own test accuracy and NLL, and those of the run's ensemble so far;
    with ``val_labels``, the same on the validation split (``val_`` columns).

    ``offset`` is the epochs spent before the run (FGE: its pretraining), so ``cost`` = offset + epoch.
    """
    running = ensemble.running([s.logprobs for s in snapshots], labels, method)
    rows = [
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
    if val_labels is not None:
        val_running = ensemble.running([s.val_logprobs for s in snapshots], val_labels, method)
        for row, s, ens in zip(rows, snapshots, val_running):
            own = ensemble.scores(s.val_logprobs, val_labels)
            row.update(
                val_accuracy=own["accuracy"],
                val_nll=own["nll"],
                ensemble_val_accuracy=ens["accuracy"],
                ensemble_val_nll=ens["nll"],
            )
    return rows


def runs_summary(rows: list[dict]) -> dict:
    """Over the rows of :func:`snapshot_rows` of one or more runs: the final ensembles (mean over runs),
    the single snapshots, and the mean distance between consecutive snapshots."""
    if not rows:
        raise ModeconnError("no snapshots to summarise: the runs took none (no training batches, or no LR minimum)")
    runs = sorted({r["run"] for r in rows})
    per_run = [[r for r in rows if r["run"] == i] for i in runs]
    finals = [rr[-1] for rr in per_run]
    dists = [r["distance"] for r in rows if not math.isnan(r["distance"])]
    summary = {
        "runs": len(runs),
        "snapshots_per_run": [len(rr) for rr in per_run],
        "ensemble_accuracy": sum(f["ensemble_accuracy"] for f in finals) / len(finals),
        "ensemble_nll": sum(f["ensemble_nll"] for f in finals) / len(finals),
        "snapshot_accuracy": sum(r["accuracy"] for r in rows) / len(rows),
        "mean_distance": sum(dists) / len(dists) if dists else None,
    }
    if all("val_accuracy" in r for r in rows):
        summary["ensemble_val_accuracy"] = sum(f["ensemble_val_accuracy"] for f in finals) / len(finals)
        summary["ensemble_val_nll"] = sum(f["ensemble_val_nll"] for f in finals) / len(finals)
        summary["snapshot_val_accuracy"] = sum(r["val_accuracy"] for r in rows) / len(rows)
    return summary


def start_scores(
    model: nn.Module,
    test_batches,
    labels: torch.Tensor,
    runtime: Runtime = CPU,
    val_batches=None,
    val_labels: torch.Tensor | None = None,
) -> dict:
    """The test accuracy, NLL and ECE (and validation accuracy and NLL) of ``model`` as it is now, in eval mode
    (BatchNorm on its running statistics): what a run starts from. Leaves ``model`` in train mode."""
    model.eval()
    logprobs, _ = predict(model, test_batches, runtime)
    out = {**ensemble.scores(logprobs, labels), "ece": calibration.ece(logprobs, labels)}
    if val_batches is not None and val_labels is not None:
        val = ensemble.scores(predict(model, val_batches, runtime)[0], val_labels)
        out.update(val_accuracy=val["accuracy"], val_nll=val["nll"])
    model.train()
    return out


def start_summary(records: list[dict]) -> dict:
    """Over the runs' start networks (records with ``start``, see :func:`start_scores`): the mean of each score
    as ``start_<score>`` (``start_accuracy``, ``start_nll``, ``start_ece``, ``start_val_accuracy``, ...);
    empty when no run has one."""
    starts = [rec["start"] for rec in records if rec.get("start") is not None]
    if not starts:
        return {}
    keys = [k for k in starts[0] if all(k in s for s in starts)]
    return {f"start_{k}": sum(s[k] for s in starts) / len(starts) for k in keys}


@dataclass
class RunPlan:
    """One run of snapshots to train: ``make()`` builds it — (model, optimizer, train batches, lr_at, is_snapshot) —
    with its own seeds set; ``start_epoch`` is what the run cost before it began (FGE's pretraining; 0 for SSE)."""

    seed: int
    start_epoch: int
    make: Callable[[], tuple[nn.Module, torch.optim.Optimizer, Any, Callable[[int], float], Callable[[int], bool]]]
    record: dict = field(default_factory=dict)  # extra facts for the run's record (e.g. its cycle in iterations)


def run_record(plan: RunPlan, epochs: int, snapshots: list[Snapshot]) -> dict:
    """A finished run as ``compare`` reads it: where it started, what it cost, its snapshots."""
    return {
        "seed": plan.seed,
        "start_epoch": plan.start_epoch,
        "epochs": epochs,
        "cost": plan.start_epoch + epochs,
        **plan.record,
        "snapshots": [vars(s) for s in snapshots],
    }


def train_runs(
    plans: list[RunPlan],
    epochs: int,
    test_batches,
    labels: torch.Tensor,
    runtime: Runtime = CPU,
    resume: ResumeState | None = None,
    progress: Progress | None = None,
    what: str = "training",
    val_batches=None,
    val_labels: torch.Tensor | None = None,
    swa_batches=None,
    evaluate_start: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Train the runs one after the other, ``epochs`` each, collecting snapshots; returns (records, rows): one
    record per run (:func:`run_record`) and one row per snapshot (:func:`snapshot_rows`), on rank 0 (in a
    data-parallel run the other processes only train and get none).

    With ``val_batches`` and ``val_labels`` each snapshot is also evaluated on the validation split.

    With ``swa_batches`` (the un-augmented training set) each run keeps the running mean of its snapshots'
    weights and, when it ends, its record gets ``swa``: that average evaluated as one network after BatchNorm
    recalibration on ``swa_batches`` (:meth:`SnapshotCollector.swa`).

    With ``evaluate_start`` each run's record gets ``start``: the :func:`start_scores` of its network as
    ``make()`` built it, before the first step.

    With ``resume``, the whole state (finished runs, and the current run's weights, optimizer, schedule
    position, random states and snapshots) is saved after every epoch, and a saved state is continued.
    ``progress(total)`` is advanced once per epoch.
    """
    saved = resume.load() if resume is not None else None
    done = int(saved["epoch"]) if saved is not None else 0
    records, rows = (list(saved["runs"]), list(saved["snapshot_rows"])) if saved is not None else ([], [])
    with advancing(progress, len(plans) * epochs - done) as advance:
        for r, plan in enumerate(plans):
            if (r + 1) * epochs <= done:
                continue  # finished before the preemption
            model, optimizer, train_batches, lr_at, is_snapshot = plan.make()
            collector = SnapshotCollector(
                model, test_batches, is_snapshot, len(train_batches), runtime, val_batches, swa_batches is not None
            )
            run = _Run(records, rows, collector)
            resumed = saved if saved is not None and done > r * epochs else None  # this run was interrupted
            if resumed is None and evaluate_start and runtime.is_main:  # the network it starts from, before any step
                run.start = start_scores(model, test_batches, labels, runtime, val_batches, val_labels)
            step = cross_entropy_step(runtime.wrap(model))  # data-parallel under torchrun
            what_run = f"{what} (run {r}, seed {plan.seed})"
            training = Training(model, optimizer, train_batches, step, lr_at, on_step=collector.on_step, what=what_run)

            def measure(epoch: int, stats, r=r, plan=plan, run=run) -> dict:
                if epoch == (r + 1) * epochs:  # the run's last epoch: its record, before the state is saved
                    snaps = run.collector.snapshots
                    rows.extend(
                        snapshot_rows(r, plan.seed, snaps, labels, float(plan.start_epoch), val_labels=val_labels)
                    )
                    records.append(run_record(plan, epochs, snaps))
                    if evaluate_start:
                        records[-1]["start"] = run.start
                    if swa_batches is not None and snaps:
                        records[-1]["swa"] = run.collector.swa(swa_batches)
                return {}

            def report(row: dict) -> None:
                advance(f"epoch {row['epoch']} loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f}")

            run_epochs(
                training,
                epochs,
                runtime=runtime,
                resume=resume,
                saved=resumed,
                offset=r * epochs,
                measure=measure,
                extra=run,
                report=report,
            )
    return records, rows


class _Run:
    """What the multi-run state keeps beside the current run's training: the finished runs and their rows, the
    current run's snapshots and its start scores."""

    def __init__(self, records: list[dict], rows: list[dict], collector: SnapshotCollector):
        self.records, self.rows, self.collector, self.start = records, rows, collector, None

    def state_dict(self) -> dict:
        return {
            "runs": self.records,
            "snapshot_rows": self.rows,
            "collector": self.collector.state_dict(),
            "start": self.start,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.collector.load_state_dict(state["collector"])
        self.start = state["start"]


def save_snapshots(
    path: Path | str, runs: list[dict], labels: torch.Tensor, val_labels: torch.Tensor | None = None
) -> None:
    """Write the runs (records of :func:`train_runs`, with their snapshots' test and validation log-probabilities)
    and the labels of each split as one file, atomically, in a new folder ``path.parent`` (replaced whole)."""
    path = Path(path)
    blob = {"format": FORMAT, "runs": runs, "labels": labels, "val_labels": val_labels}
    with atomic_dir(path.parent) as tmp:
        atomic_torch_save(blob, tmp / path.name)


def load_snapshots(path: Path | str, what: str = "snapshots file", hint: str = "Train the runs again.") -> dict:
    """Read a file of :func:`save_snapshots`: ``{"format", "runs", "labels", "val_labels"}``. A missing, corrupt
    or foreign file is a :class:`CheckpointError` naming it (``what``), ending with ``hint``: how to make it."""
    blob = load_file(path, what, hint)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a modeconn snapshots file. {hint}")
    return blob
