"""Stage fge: Fast Geometric Ensembling from endpoint checkpoints (paper, Sec. 5; :func:`modeconn.fge.plans`).

For each seed of ``fge.start_seeds``, start from that endpoint's checkpoint at epoch ``fge.start_epoch`` of its
standard-schedule run (``train.save_epochs`` must include it; ``fge.start_files``: checkpoints of your own), then
train ``fge.epochs`` more epochs with the cyclical LR between ``fge.lr_1`` and ``fge.lr_2``, a snapshot at each LR
minimum. ``compare`` gathers the runs by budget (run r costs ``start_epoch + epochs`` epochs). Each run's
snapshots are also averaged into one network (SWA, under the run's ``swa``), and the network each run starts
from is measured before any FGE step (``start_accuracy``, … in the metrics, mean over runs; per run in the run
information's ``start``).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import typer

from modeconn import fge
from modeconn.data import eval_batches
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.snapshots import save_snapshots, train_runs

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import check_batch_size, read_sections
from .kit.inputs import endpoint_checkpoint, prepared_data, test_loader, train_loader, user_checkpoints, val_split
from .kit.layout import ENDPOINTS, endpoint_checkpoint_at, prepared_files
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


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
    if cfg.start_files:  # checkpoints of the user's own (run r: the r-th file); a new head is freshly initialised
        seed_everything(cfg.seed)
        paths, seeds = [Path(f) for f in cfg.start_files], tuple(range(len(cfg.start_files)))
        ckpts = user_checkpoints(paths, params, prepared, "fge.start_files", new_head=True)
        start = f"{', '.join(cfg.start_files)} (fge.start_files; {cfg.start_epoch} pretraining epochs counted)"
    else:
        paths, seeds = [endpoint_checkpoint_at(endpoints, s, cfg.start_epoch) for s in cfg.start_seeds], cfg.start_seeds
        ckpts = [endpoint_checkpoint(p) for p in paths]  # fail early, before any training
        start = f"epoch {cfg.start_epoch} of seeds {list(cfg.start_seeds)}"
    data = prepared_data(prepared, runtime)
    check_batch_size("fge.batch_size", cfg.batch_size, len(data.train), prepared)
    val_b, val_labels = val_split(data, runtime)
    specs = {"specs": [c["spec"] for c in ckpts]}  # of params' model where a start file is a plain state dict
    resume = resume_state("fge", runtime, cfg, specs, inputs=(*prepared_files(prepared), *paths))
    how = f"cycle {cfg.cycle} epochs, lr {cfg.lr_1:g} → {cfg.lr_2:g}"
    log.info(f"FGE: {len(ckpts)} run(s) of {cfg.epochs} epochs from {start}, {how}")
    iters = len(data.train) // cfg.batch_size  # per epoch
    warnings = fge.settings_warnings(cfg.cycle, cfg.epochs, iters, names=("fge.cycle", "fge.epochs"))
    for line in warnings:
        log.warning("%s", line)
    t0 = time.perf_counter()
    sgd = dict(cycle=cfg.cycle, lr_1=cfg.lr_1, lr_2=cfg.lr_2, momentum=cfg.momentum, wd=cfg.wd)
    batches = functools.partial(train_loader, data, cfg.batch_size, runtime=runtime)  # of a run's seed
    plans = fge.plans(ckpts, seeds, batches, seed=cfg.seed, start_epoch=cfg.start_epoch, **sgd, runtime=runtime)
    test_b, test_y, report = test_loader(data, runtime), data.test.y.cpu(), functools.partial(progress, "fge")
    measure = dict(val_batches=val_b, val_labels=val_labels, evaluate_start=True)  # start: each run's before FGE
    measure["swa_batches"] = eval_batches(data, channels_last=runtime.channels_last).bn  # BN of SWA: un-augmented
    runs, rows = train_runs(plans, cfg.epochs, test_b, test_y, runtime, resume, report, what="FGE", **measure)
    if not runtime.is_main:  # rank 0 evaluated the snapshots and writes; the others only trained
        return
    save_snapshots(out / "snapshots.pt", runs, data.test.y.cpu(), val_labels)
    summary = fge.summary(runs, rows, data.test.y.cpu(), val_labels)
    info = dict(runs=summary.pop("runs"), snapshots_per_run=summary.pop("snapshots_per_run"), cycle=cfg.cycle)
    info.update(lr_1=cfg.lr_1, lr_2=cfg.lr_2, start_epoch=cfg.start_epoch, epochs=cfg.epochs, **fge.starts(runs))
    info.update(resumed_after_epoch=resume.resumed_after, warnings=warnings, dataset=data.info.name)
    info.update(**runtime.as_dict(), seconds=time.perf_counter() - t0)
    write_csv(table, rows)
    write_metrics(metrics, summary, info)
    resume.clear()
    console.print(
        f"[bold]FGE[/]: {info['runs']} run(s), {info['snapshots_per_run']} snapshots, start network's accuracy "
        f"{summary.get('start_accuracy', float('nan')):.4f} → ensemble accuracy {summary['ensemble_accuracy']:.4f} "
        f"(single snapshots {summary['snapshot_accuracy']:.4f}), mean distance between snapshots "
        f"{summary['mean_distance'] or float('nan'):.2f}; SWA of each run's snapshots: accuracy "
        f"{summary.get('swa_accuracy', float('nan')):.4f} → {out}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
