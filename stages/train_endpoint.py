"""Stage train_endpoint@<seed>: train one network from a seed with the paper's standard schedule.

SGD with momentum and weight decay; LR constant for the first 50% of the
epochs, linear decay to 1% by 90%, then constant (per iteration). Writes the
checkpoint (plus the extra checkpoints of ``train.save_epochs``, where FGE
starts), the test- and validation-set log-probabilities for ensembling, a
per-epoch CSV and a metrics JSON.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import typer

from modeconn import ensemble, schedules
from modeconn.io import atomic_dir, atomic_torch_save, save_checkpoint
from modeconn.resume import capture, restore
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.train import cross_entropy_step, make_sgd, predict, train_epoch

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import ModelConfig, TrainConfig, check_batch_size, read_sections
from .kit.inputs import prepared_data, test_loader, train_loader, val_split
from .kit.layout import prepared_files
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


def train_one(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    seed: int,
    prepared: Path,
    out: Path,
    metrics: Path,
    log_csv: Path,
    runtime: Runtime,
) -> dict:
    seed_everything(seed)
    data = prepared_data(prepared, runtime)
    check_batch_size("train.batch_size", cfg.batch_size, len(data.train), prepared)
    spec = model_cfg.spec(data.info)
    model = runtime.prepare(model_cfg.build(data.info))  # model.weights, when set, loaded here
    train_batches = train_loader(data, cfg.batch_size, seed, runtime)
    test_batches = test_loader(data, runtime)
    optimizer = make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.wd)
    total = cfg.epochs * len(train_batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, cfg.lr)  # noqa: E731
    step = cross_entropy_step(runtime.wrap(model))  # data-parallel under torchrun
    state_of = f"train_endpoint/seed_{seed}"  # model_cfg brings the content of model.weights into the key
    resume = resume_state(state_of, runtime, cfg, model_cfg, {"seed": seed}, inputs=prepared_files(prepared))
    saved = resume.load()
    rows, extra, iteration, seconds, done = [], {}, 1, 0.0, 0
    if saved is not None:
        iteration = restore(saved, model, optimizer, train_batches.generator)
        rows, extra, seconds, done = saved["rows"], saved["extra"], saved["seconds"], saved["epoch"]
    log.info(
        "seed %d: %s on %s (%d train / %d test images), %d epochs%s",
        seed,
        spec["name"],
        data.info.name,
        data.train.y.numel(),
        data.test.y.numel(),
        cfg.epochs,
        f", resuming after epoch {done}" if done else "",
    )
    with progress(f"train_endpoint seed {seed}", cfg.epochs - done) as advance:
        for epoch in range(done + 1, cfg.epochs + 1):
            model.train()
            stats, iteration = train_epoch(
                step, optimizer, train_batches, lr_at, iteration, runtime, what=f"endpoint training (seed {seed})"
            )
            seconds += stats.seconds
            if not runtime.is_main:  # rank 0 evaluates, logs and saves; the others only train
                resume.epoch_done(epoch, {})
                continue
            model.eval()
            logprobs, y = predict(model, test_batches, runtime)
            row = {
                "epoch": epoch,
                "lr": lr_at(iteration - 1),
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "test_nll": ensemble.nll(logprobs, y),
                "test_accuracy": ensemble.accuracy(logprobs, y),
                "seconds": seconds,
                "images_per_s": stats.images_per_s,
            }
            rows.append(row)
            if epoch in cfg.save_epochs:  # FGE starts here: weights and the optimizer's momentum
                extra[epoch] = {
                    "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "optimizer": copy.deepcopy(optimizer.state_dict()),
                }
            resume.epoch_done(
                epoch,
                {
                    **capture(model, optimizer, iteration, train_batches.generator),
                    "rows": rows,
                    "extra": extra,
                    "seconds": seconds,
                },
            )
            advance(
                f"loss {stats.loss:.3f} acc {stats.accuracy:.3f} test acc {row['test_accuracy']:.3f} "
                f"{stats.images_per_s:.0f} img/s"
            )
    if not runtime.is_main:
        return {}
    model.eval()
    logprobs, y = predict(model, test_batches, runtime)
    val_b, _ = val_split(data, runtime)
    val_lp, val_y = predict(model, val_b, runtime) if val_b is not None else (None, None)
    last = rows[-1]
    result = {
        "train_loss": last["train_loss"],
        "train_accuracy": last["train_accuracy"],
        "test_nll": last["test_nll"],
        "test_accuracy": last["test_accuracy"],
        "test_error": 1 - last["test_accuracy"],
    }
    if val_lp is not None:  # the split that chooses settings (issue: defaults by validation, never test)
        result.update(val_nll=ensemble.nll(val_lp, val_y), val_accuracy=ensemble.accuracy(val_lp, val_y))
    run = {
        "seed": seed,
        "dataset": data.info.name,
        "model": spec["name"],
        "model_args": spec["args"],
        "epochs": cfg.epochs,
        "train_images": int(data.train.y.numel()),
        "resumed_after_epoch": done,
        "seconds": seconds,
        "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
        **runtime.as_dict(),
    }
    with atomic_dir(out) as tmp:
        save_checkpoint(
            tmp / "model.pt", spec, model.state_dict(), epoch=cfg.epochs, seed=seed, optimizer=optimizer.state_dict()
        )
        for epoch, state in extra.items():
            save_checkpoint(
                tmp / f"epoch_{epoch}.pt",
                spec,
                state["state_dict"],
                epoch=epoch,
                seed=seed,
                optimizer=state["optimizer"],
            )
        atomic_torch_save({"logprobs": logprobs, "labels": y}, tmp / "test_logprobs.pt")
        if val_lp is not None:
            atomic_torch_save({"logprobs": val_lp, "labels": val_y}, tmp / "val_logprobs.pt")
    write_csv(log_csv, rows)
    write_metrics(metrics, result, run)
    resume.clear()
    return {**result, **run}


def main(
    seed: int = typer.Option(..., "--seed", help="Seed of this endpoint (one of train.seeds)."),
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    out: Path = typer.Option(None, "--out", help="Output folder [default: data/endpoints/seed_<seed>]."),
    metrics: Path = typer.Option(None, "--metrics", help="Metrics JSON [default: metrics/endpoints/seed_<seed>.json]."),
    log_csv: Path = typer.Option(None, "--history", help="Per-epoch CSV [default: metrics/endpoints/seed_<seed>.csv]."),
    runtime: Runtime = CPU,
) -> None:
    """Train the endpoint network of one seed with the standard schedule (params: model, train)."""
    cfg, model_cfg = read_sections(params, "train", "model")
    out = out or Path(f"data/endpoints/seed_{seed}")
    metrics = metrics or Path(f"metrics/endpoints/seed_{seed}.json")
    log_csv = log_csv or Path(f"metrics/endpoints/seed_{seed}.csv")
    t0 = time.perf_counter()
    result = train_one(cfg, model_cfg, seed, prepared, out, metrics, log_csv, runtime)
    if not runtime.is_main:
        return
    console.print(
        f"[bold]seed {seed}[/]: test accuracy {result['test_accuracy']:.4f}, "
        f"NLL {result['test_nll']:.4f} after {cfg.epochs} epochs "
        f"({time.perf_counter() - t0:.0f} s, {result['images_per_s']:.0f} img/s) → {out}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
