"""Stage sse: Snapshot Ensembles (Huang et al. 2017), the paper's baseline in Sec. 5 (:func:`modeconn.sse.plan`).

One run from scratch over ``sse.epochs`` with ``sse.cycles`` cosine cycles, a snapshot at the end of each. Because
every cycle restarts the LR, the first k cycles of this run are exactly an SSE run of that length: ``compare``
takes the snapshots within each budget from this one run (set ``sse.epochs`` to the largest budget, 3B by default).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import typer

from modeconn import sse
from modeconn.errors import ConfigError
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.snapshots import runs_summary, save_snapshots, train_runs

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import check_batch_size, read_sections
from .kit.inputs import prepared_data, test_loader, train_loader, val_split
from .kit.layout import prepared_files
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    out: Path = typer.Option(Path("data/sse"), "--out", help="Output folder (snapshots.pt)."),
    metrics: Path = typer.Option(Path("metrics/sse.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/sse.csv"), "--table", help="One row per snapshot (DVC plot)."),
    runtime: Runtime = CPU,
) -> None:
    """Train a Snapshot Ensemble from scratch (params: model, sse)."""
    cfg, model_cfg = read_sections(params, "sse", "model")
    data = prepared_data(prepared, runtime)
    check_batch_size("sse.batch_size", cfg.batch_size, len(data.train), prepared)
    iters = len(data.train) // cfg.batch_size
    if cfg.cycles > cfg.epochs * iters:
        raise ConfigError(f"sse.cycles = {cfg.cycles} exceeds the {cfg.epochs * iters} iterations of sse.epochs")
    val_b, val_labels = val_split(data, runtime)
    resume = resume_state("sse", runtime, cfg, model_cfg, inputs=prepared_files(prepared))  # model.weights too
    log.info("SSE: %d epochs, %d cycles from scratch (seed %d)", cfg.epochs, cfg.cycles, cfg.seed)
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    model = runtime.prepare(model_cfg.build(data.info))
    batches = train_loader(data, cfg.batch_size, cfg.seed, runtime)
    plan = sse.plan(
        model, batches, seed=cfg.seed, epochs=cfg.epochs, cycles=cfg.cycles, lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd
    )
    runs, rows = train_runs(
        [plan],
        cfg.epochs,
        test_loader(data, runtime),
        data.test.y.cpu(),
        runtime,
        resume,
        functools.partial(progress, "sse"),
        what="SSE training",
        val_batches=val_b,
        val_labels=val_labels,
    )
    if not runtime.is_main:  # rank 0 evaluated the snapshots and writes; the others only trained
        return
    save_snapshots(out / "snapshots.pt", runs, data.test.y.cpu(), val_labels)
    summary = runs_summary(rows)
    run_info = {
        "runs": summary.pop("runs"),
        "snapshots_per_run": summary.pop("snapshots_per_run"),
        "cycles": cfg.cycles,
        "lr": cfg.lr,
        "epochs": cfg.epochs,
        "resumed_after_epoch": resume.resumed_after,
        "dataset": data.info.name,
        **runtime.as_dict(),
        "seconds": time.perf_counter() - t0,
    }
    write_csv(table, rows)
    write_metrics(metrics, summary, run_info)
    resume.clear()
    console.print(
        f"[bold]SSE[/]: {run_info['snapshots_per_run']} snapshots, ensemble accuracy "
        f"{summary['ensemble_accuracy']:.4f} (single snapshots {summary['snapshot_accuracy']:.4f}) → {out}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
