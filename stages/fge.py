"""Stage fge: Fast Geometric Ensembling from endpoint checkpoints (paper, Sec. 5).

For each seed of ``fge.start_seeds``, load that endpoint's checkpoint at epoch
``fge.start_epoch`` of its standard-schedule run (``train.save_epochs`` must
include it), then train ``fge.epochs`` more epochs with the cyclical LR between
``fge.lr_1`` and ``fge.lr_2``, a snapshot at each LR minimum. Runs are
independent; ``compare`` gathers them by budget (run r costs
``start_epoch + epochs`` epochs, pretraining included).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn.data import EVAL_BATCH, Loader
from modeconn.errors import CheckpointError
from modeconn.fge import Snapshot, cycle_iterations, fge_schedule, run_snapshots, runs_summary, snapshot_rows
from modeconn.io import atomic_dir, atomic_torch_save, build_from_checkpoint
from modeconn.runtime import CPU, Runtime, derived_seed, seed_everything
from modeconn.train import cross_entropy_step, make_sgd

from .common import (
    ENDPOINTS,
    ParamsOpt,
    PreparedOpt,
    console,
    endpoint_checkpoint,
    log,
    prepared_data,
    progress,
    stage_app,
    write_csv,
    write_metrics,
)
from .config import read_sections


def start_checkpoint(endpoints: Path, seed: int, epoch: int) -> dict:
    """The checkpoint of endpoint ``seed`` at ``epoch``: epoch_<e>.pt, or model.pt if it is that epoch."""
    folder = endpoints / f"seed_{seed}"
    path = folder / f"epoch_{epoch}.pt"
    if path.is_file():
        return endpoint_checkpoint(path)
    final = folder / "model.pt"
    if final.is_file():
        ckpt = endpoint_checkpoint(final)
        if ckpt.get("epoch") == epoch:
            return ckpt
    raise CheckpointError(
        f"no checkpoint of endpoint seed {seed} at epoch {epoch} ({path} does not exist): add {epoch} to "
        f"train.save_epochs (or set fge.start_epoch to one of them) and make sure {seed} is in train.seeds, "
        "then `dvc repro`"
    )


def run_record(seed: int, start_epoch: int, epochs: int, snapshots: list[Snapshot], **extra) -> dict:
    """One run of snapshots as stored in snapshots.pt (what ``compare`` reads)."""
    return {
        "seed": seed,
        "start_epoch": start_epoch,
        "epochs": epochs,
        "cost": start_epoch + epochs,
        **extra,
        "snapshots": [
            {"epoch": s.epoch, "iteration": s.iteration, "logprobs": s.logprobs, "distance": s.distance}
            for s in snapshots
        ],
    }


def save_runs(out: Path, runs: list[dict], labels: torch.Tensor) -> None:
    with atomic_dir(out) as tmp:
        atomic_torch_save({"format": "modeconn.snapshots/1", "runs": runs, "labels": labels}, tmp / "snapshots.pt")


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of endpoint checkpoints."),
    out: Path = typer.Option(Path("data/fge"), "--out", help="Output folder (snapshots.pt)."),
    metrics: Path = typer.Option(Path("metrics/fge.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/fge.csv"), "--table", help="One row per snapshot (DVC plot)."),
    runtime: Runtime = CPU,
) -> None:
    """Run FGE from each endpoint in fge.start_seeds (params: fge)."""
    (cfg,) = read_sections(params, "fge")
    ckpts = [start_checkpoint(endpoints, s, cfg.start_epoch) for s in cfg.start_seeds]  # fail early
    data = prepared_data(prepared, runtime)
    test_b = Loader(data.test, data.info, EVAL_BATCH, train=False, channels_last=runtime.channels_last)
    labels = data.test.y.cpu()
    runs, rows, t0 = [], [], time.perf_counter()
    with progress("fge", len(cfg.start_seeds) * cfg.epochs) as advance:
        for run, (seed, ckpt) in enumerate(zip(cfg.start_seeds, ckpts)):
            run_seed = derived_seed(cfg.seed, seed)
            seed_everything(run_seed)
            model = runtime.prepare(build_from_checkpoint(ckpt))
            train_b = Loader(
                data.train,
                data.info,
                cfg.batch_size,
                train=True,
                seed=run_seed,
                drop_last=True,
                channels_last=runtime.channels_last,
            )
            c = cycle_iterations(cfg.cycle, len(train_b))
            lr_at, is_snap = fge_schedule(c, cfg.lr_1, cfg.lr_2)
            opt = make_sgd(model.parameters(), cfg.lr_1, cfg.momentum, cfg.wd)
            log.info(
                "FGE run %d from seed %d at epoch %d: %d epochs, cycle %d iterations",
                run,
                seed,
                cfg.start_epoch,
                cfg.epochs,
                c,
            )
            snaps = run_snapshots(
                model,
                cross_entropy_step(model),
                opt,
                train_b,
                test_b,
                cfg.epochs,
                lr_at,
                is_snap,
                runtime,
                on_epoch=lambda e, s, run=run: advance(f"run {run} loss {s.loss:.3f}"),
                what=f"FGE (run from seed {seed})",
            )
            rows += snapshot_rows(run, seed, snaps, labels, float(cfg.start_epoch))
            runs.append(run_record(seed, cfg.start_epoch, cfg.epochs, snaps, cycle_iterations=c))
    save_runs(out, runs, labels)
    summary = runs_summary(rows)
    info = {
        "runs": summary.pop("runs"),
        "snapshots_per_run": summary.pop("snapshots_per_run"),
        "cycle": cfg.cycle,
        "lr_1": cfg.lr_1,
        "lr_2": cfg.lr_2,
        "start_epoch": cfg.start_epoch,
        "epochs": cfg.epochs,
        "dataset": data.info.name,
        **runtime.as_dict(),
        "seconds": time.perf_counter() - t0,
    }
    write_csv(table, rows)
    write_metrics(metrics, summary, info)
    console.print(
        f"[bold]FGE[/]: {info['runs']} run(s), {info['snapshots_per_run']} snapshots, ensemble "
        f"accuracy {summary['ensemble_accuracy']:.4f} (single snapshots "
        f"{summary['snapshot_accuracy']:.4f}), mean distance between snapshots "
        f"{summary['mean_distance'] or float('nan'):.2f} → {out}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
