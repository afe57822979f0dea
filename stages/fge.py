"""Stage fge: Fast Geometric Ensembling from endpoint checkpoints (paper, Sec. 5).

For each seed of ``fge.start_seeds``, load that endpoint's checkpoint at epoch
``fge.start_epoch`` of its standard-schedule run (``train.save_epochs`` must
include it), then train ``fge.epochs`` more epochs with the cyclical LR between
``fge.lr_1`` and ``fge.lr_2``, a snapshot at each LR minimum. Runs are
independent; ``compare`` gathers them by budget (run r costs
``start_epoch + epochs`` epochs, pretraining included).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import typer

from modeconn import ensemble
from modeconn.data import Loader
from modeconn.errors import CheckpointError
from modeconn.fge import Snapshot, cycle_iterations, fge_schedule, run_snapshots
from modeconn.io import atomic_dir, atomic_torch_save, build_from_checkpoint, load_checkpoint
from modeconn.train import cross_entropy_step, make_sgd, prepare_module, resolve_device, seed_everything

from .common import (check_sgd, ENDPOINTS, EVAL_BATCH, DeviceOpt, ParamsOpt, PreparedOpt, console, load_prepared, log,
                     progress, read_params, require, section, user_errors, write_csv, write_json)


@dataclasses.dataclass(frozen=True)
class FgeConfig:
    """``fge``: paper: from epoch 160 of 200, 40 epochs, cycle 2, lr_1 0.05→lr_2 0.0005 (PreResNet)."""

    start_seeds: tuple[int, ...]
    start_epoch: int
    epochs: int
    cycle: float = 2
    lr_1: float = 0.05
    lr_2: float = 0.0005
    batch_size: int = 128
    momentum: float = 0.9
    wd: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        require(len(self.start_seeds) >= 1, "fge.start_seeds must list at least one endpoint seed")
        require(len(set(self.start_seeds)) == len(self.start_seeds), "fge.start_seeds has a seed twice")
        require(self.start_epoch >= 1, f"fge.start_epoch must be at least 1, got {self.start_epoch}")
        require(self.epochs >= 1, f"fge.epochs must be at least 1, got {self.epochs}")
        require(self.cycle > 0 and (self.cycle < 1 or float(self.cycle).is_integer() and int(self.cycle) % 2 == 0),
                f"fge.cycle = {self.cycle}: the cycle must be an even number of epochs (the snapshot is taken "
                "mid-cycle, at an epoch boundary), or a fraction of one epoch (e.g. 0.5) for short runs")
        require(self.cycle / 2 <= self.epochs, f"fge.cycle = {self.cycle} is too long for fge.epochs = "
                f"{self.epochs}: no LR minimum (snapshot) would be reached")
        require(self.lr_1 > 0 and self.lr_2 > 0, "fge.lr_1 and fge.lr_2 must be positive")
        require(self.lr_2 <= self.lr_1, f"fge.lr_2 ({self.lr_2}) must not exceed fge.lr_1 ({self.lr_1}): "
                "the LR cycles down from lr_1 to its minimum lr_2")
        check_sgd("fge", self)


def start_checkpoint(endpoints: Path, seed: int, epoch: int) -> dict:
    """The checkpoint of endpoint ``seed`` at ``epoch``: epoch_<e>.pt, or model.pt if it is that epoch."""
    folder = endpoints / f"seed_{seed}"
    path = folder / f"epoch_{epoch}.pt"
    if path.is_file():
        return load_checkpoint(path)
    final = folder / "model.pt"
    if final.is_file():
        ckpt = load_checkpoint(final)
        if ckpt.get("epoch") == epoch:
            return ckpt
    raise CheckpointError(
        f"no checkpoint of endpoint seed {seed} at epoch {epoch} ({path} does not exist): add {epoch} to "
        f"train.save_epochs (or set fge.start_epoch to one of them) and make sure {seed} is in train.seeds, "
        "then `dvc repro`")


def snapshot_rows(run: int, seed: int, snapshots: list[Snapshot], labels: torch.Tensor, offset: float,
                  method: str = "probs") -> list[dict]:
    """Per-snapshot CSV rows: its own accuracy/NLL and the run's ensemble so far."""
    rows = []
    for j, s in enumerate(snapshots):
        ens = ensemble.combine([x.logprobs for x in snapshots[: j + 1]], method)
        rows.append({"run": run, "seed": seed, "snapshot": j + 1, "epoch": s.epoch, "cost": offset + s.epoch,
                     "accuracy": ensemble.accuracy(s.logprobs, labels), "nll": ensemble.nll(s.logprobs, labels),
                     "ensemble_accuracy": ensemble.accuracy(ens, labels), "ensemble_nll": ensemble.nll(ens, labels),
                     "distance": s.distance})
    return rows


def save_runs(out: Path, runs: list[dict], labels: torch.Tensor) -> None:
    with atomic_dir(out) as tmp:
        atomic_torch_save({"format": "modeconn.snapshots/1", "runs": runs, "labels": labels}, tmp / "snapshots.pt")


def run_summary(rows: list[dict], runs: list[dict]) -> dict:
    per_run = [[r for r in rows if r["run"] == i] for i in range(len(runs))]
    finals = [rr[-1] for rr in per_run]
    dists = [r["distance"] for r in rows if not math.isnan(r["distance"])]
    return {"runs": len(runs), "snapshots_per_run": [len(rr) for rr in per_run],
            "ensemble_accuracy": sum(f["ensemble_accuracy"] for f in finals) / len(finals),
            "ensemble_nll": sum(f["ensemble_nll"] for f in finals) / len(finals),
            "snapshot_accuracy": sum(r["accuracy"] for r in rows) / len(rows),
            "mean_distance": sum(dists) / len(dists) if dists else None}


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of endpoint checkpoints."),
    out: Path = typer.Option(Path("data/fge"), "--out", help="Output folder (snapshots.pt)."),
    metrics: Path = typer.Option(Path("metrics/fge.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/fge.csv"), "--table", help="One row per snapshot (DVC plot)."),
    device: str = DeviceOpt,
) -> None:
    """Run FGE from each endpoint in fge.start_seeds (params: fge)."""
    with user_errors():
        cfg = section(read_params(params), "fge", FgeConfig)
        dev = resolve_device(device)
        ckpts = [start_checkpoint(endpoints, s, cfg.start_epoch) for s in cfg.start_seeds]  # fail early
        data = load_prepared(prepared, dev)
        channels_last = dev.type == "cuda"
        test_b = Loader(data.test, data.info, EVAL_BATCH, train=False, channels_last=channels_last)
        labels = data.test.y.cpu()
        runs, rows, t0 = [], [], time.perf_counter()
        with progress("fge", len(cfg.start_seeds) * cfg.epochs) as advance:
            for run, (seed, ckpt) in enumerate(zip(cfg.start_seeds, ckpts)):
                seed_everything(cfg.seed * 1000 + seed)
                model = prepare_module(build_from_checkpoint(ckpt), dev)
                train_b = Loader(data.train, data.info, cfg.batch_size, train=True, seed=cfg.seed * 1000 + seed,
                                 drop_last=True, channels_last=channels_last)
                c = cycle_iterations(cfg.cycle, len(train_b))
                lr_at, is_snap = fge_schedule(c, cfg.lr_1, cfg.lr_2)
                opt = make_sgd(model.parameters(), cfg.lr_1, cfg.momentum, cfg.wd)
                log.info("FGE run %d from seed %d at epoch %d: %d epochs, cycle %d iterations", run, seed,
                         cfg.start_epoch, cfg.epochs, c)
                snaps = run_snapshots(model, cross_entropy_step(model), opt, train_b, test_b, cfg.epochs, lr_at,
                                      is_snap, dev, on_epoch=lambda e, s: advance(f"run {run} loss {s.loss:.3f}"),
                                      what=f"FGE (run from seed {seed})")
                offset = float(cfg.start_epoch)
                rows += snapshot_rows(run, seed, snaps, labels, offset)
                runs.append({"seed": seed, "start_epoch": cfg.start_epoch, "epochs": cfg.epochs,
                             "cost": cfg.start_epoch + cfg.epochs, "cycle_iterations": c,
                             "snapshots": [{"epoch": s.epoch, "iteration": s.iteration, "logprobs": s.logprobs,
                                            "distance": s.distance} for s in snaps]})
        save_runs(out, runs, labels)
        summary = {**run_summary(rows, runs), "cycle": cfg.cycle, "lr_1": cfg.lr_1, "lr_2": cfg.lr_2,
                   "start_epoch": cfg.start_epoch, "epochs": cfg.epochs, "dataset": data.info.name,
                   "seconds": time.perf_counter() - t0}
        write_csv(table, rows)
        write_json(metrics, summary)
        console.print(f"[bold]FGE[/]: {len(runs)} run(s), {summary['snapshots_per_run']} snapshots, ensemble "
                      f"accuracy {summary['ensemble_accuracy']:.4f} (single snapshots "
                      f"{summary['snapshot_accuracy']:.4f}), mean distance between snapshots "
                      f"{summary['mean_distance'] or float('nan'):.2f} → {out}")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
