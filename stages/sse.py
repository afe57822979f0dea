"""Stage sse: Snapshot Ensembles (Huang et al. 2017), the paper's baseline in Sec. 5.

One run from scratch over ``sse.epochs`` with ``sse.cycles`` cosine cycles,
a snapshot at the end of each. Because every cycle restarts the LR, the first
k cycles of this run are exactly an SSE run of that length: ``compare`` takes
the snapshots within each budget from this one run (set ``sse.epochs`` to the
largest budget, 3B by default).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import typer

from modeconn.data import Loader
from modeconn.fge import run_snapshots, sse_schedule
from modeconn.train import cross_entropy_step, make_sgd, prepare_module, resolve_device, seed_everything

from .common import (check_sgd, EVAL_BATCH, DeviceOpt, ModelConfig, ParamsOpt, PreparedOpt, build_model, console,
                     load_prepared, log, model_spec, progress, read_params, require, section, user_errors,
                     write_csv, write_json)
from .fge import run_summary, save_runs, snapshot_rows


@dataclasses.dataclass(frozen=True)
class SseConfig:
    """``sse``: Snapshot Ensembles from scratch (Huang et al.: lr 0.1–0.2, cycles of B/M epochs)."""

    epochs: int
    cycles: int
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    wd: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        require(self.epochs >= 1, f"sse.epochs must be at least 1, got {self.epochs}")
        require(self.cycles >= 1, f"sse.cycles must be at least 1, got {self.cycles}")
        check_sgd("sse", self)


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    out: Path = typer.Option(Path("data/sse"), "--out", help="Output folder (snapshots.pt)."),
    metrics: Path = typer.Option(Path("metrics/sse.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/sse.csv"), "--table", help="One row per snapshot (DVC plot)."),
    device: str = DeviceOpt,
) -> None:
    """Train a Snapshot Ensemble from scratch (params: model, sse)."""
    with user_errors():
        p = read_params(params)
        cfg = section(p, "sse", SseConfig)
        model_cfg = section(p, "model", ModelConfig)
        dev = resolve_device(device)
        seed_everything(cfg.seed)
        data = load_prepared(prepared, dev)
        model = prepare_module(build_model(model_spec(model_cfg, data.info)), dev)
        channels_last = dev.type == "cuda"
        train_b = Loader(data.train, data.info, cfg.batch_size, train=True, seed=cfg.seed, drop_last=True,
                         channels_last=channels_last)
        test_b = Loader(data.test, data.info, EVAL_BATCH, train=False, channels_last=channels_last)
        total = cfg.epochs * len(train_b)
        if cfg.cycles > total:
            from modeconn.errors import ConfigError

            raise ConfigError(f"sse.cycles = {cfg.cycles} exceeds the {total} iterations of sse.epochs")
        lr_at, is_snap = sse_schedule(total, cfg.cycles, cfg.lr)
        opt = make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.wd)
        log.info("SSE: %d epochs, %d cycles from scratch (seed %d)", cfg.epochs, cfg.cycles, cfg.seed)
        t0 = time.perf_counter()
        with progress("sse", cfg.epochs) as advance:
            snaps = run_snapshots(model, cross_entropy_step(model), opt, train_b, test_b, cfg.epochs, lr_at, is_snap,
                                  dev, on_epoch=lambda e, s: advance(f"loss {s.loss:.3f} acc {s.accuracy:.3f}"),
                                  what="SSE training")
        labels = data.test.y.cpu()
        rows = snapshot_rows(0, cfg.seed, snaps, labels, 0.0)
        runs = [{"seed": cfg.seed, "start_epoch": 0, "epochs": cfg.epochs, "cost": cfg.epochs,
                 "snapshots": [{"epoch": s.epoch, "iteration": s.iteration, "logprobs": s.logprobs,
                                "distance": s.distance} for s in snaps]}]
        save_runs(out, runs, labels)
        summary = {**run_summary(rows, runs), "cycles": cfg.cycles, "lr": cfg.lr, "epochs": cfg.epochs,
                   "dataset": data.info.name, "seconds": time.perf_counter() - t0}
        write_csv(table, rows)
        write_json(metrics, summary)
        console.print(f"[bold]SSE[/]: {len(snaps)} snapshots, ensemble accuracy {summary['ensemble_accuracy']:.4f} "
                      f"(single snapshots {summary['snapshot_accuracy']:.4f}) → {out}")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
