"""Stage train_endpoint@<seed>: train one network from a seed with the paper's standard schedule.

SGD with momentum and weight decay; LR constant for the first 50% of the
epochs, linear decay to 1% by 90%, then constant (per iteration). Writes the
checkpoint (plus the extra checkpoints of ``train.save_epochs``, where FGE
starts), the test-set log-probabilities for ensembling, a per-epoch CSV and a
metrics JSON.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import typer

from modeconn import ensemble, schedules
from modeconn.data import Loader
from modeconn.io import atomic_dir, atomic_torch_save, save_checkpoint
from modeconn.train import (cross_entropy_step, make_sgd, predict, prepare_module, resolve_device,
                            seed_everything, train_epoch)

from .common import (check_sgd, EVAL_BATCH, DeviceOpt, ModelConfig, ParamsOpt, PreparedOpt, build_model, console,
                     load_prepared, log, model_spec, progress, read_params, require, section, user_errors,
                     write_csv, write_json)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: endpoint training (paper: 200 epochs, lr 0.05 (VGG) / 0.1, wd 5e-4, batch 128)."""

    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    wd: float = 5e-4
    save_epochs: tuple[int, ...] = ()

    def __post_init__(self):
        require(len(self.seeds) >= 1, "train.seeds must list at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), f"train.seeds has a seed twice: {list(self.seeds)}")
        require(self.epochs >= 1, f"train.epochs must be at least 1, got {self.epochs}")
        check_sgd("train", self)
        for e in self.save_epochs:
            require(1 <= e <= self.epochs, f"train.save_epochs: {e} is outside 1..train.epochs ({self.epochs})")


def train_one(cfg: TrainConfig, model_cfg: ModelConfig, seed: int, prepared: Path, out: Path,
              metrics: Path, log_csv: Path, device_name: str) -> dict:
    device = resolve_device(device_name)
    seed_everything(seed)
    data = load_prepared(prepared, device)
    spec = model_spec(model_cfg, data.info)
    model = prepare_module(build_model(spec), device)
    channels_last = device.type == "cuda"
    train_batches = Loader(data.train, data.info, cfg.batch_size, train=True, seed=seed, drop_last=True,
                           channels_last=channels_last)
    test_batches = Loader(data.test, data.info, EVAL_BATCH, train=False, channels_last=channels_last)
    optimizer = make_sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.wd)
    total = cfg.epochs * len(train_batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, cfg.lr)  # noqa: E731
    step = cross_entropy_step(model)
    rows, extra, iteration, seconds = [], {}, 1, 0.0
    log.info("seed %d: %s on %s (%d train / %d test images), %d epochs, device %s", seed, spec["name"],
             data.info.name, data.train.y.numel(), data.test.y.numel(), cfg.epochs, device)
    with progress(f"train_endpoint seed {seed}", cfg.epochs) as advance:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            stats, iteration = train_epoch(step, optimizer, train_batches, lr_at, iteration, device,
                                           what=f"endpoint training (seed {seed})")
            seconds += stats.seconds
            model.eval()
            logprobs, y = predict(model, test_batches, device)
            row = {"epoch": epoch, "lr": lr_at(iteration - 1), "train_loss": stats.loss,
                   "train_accuracy": stats.accuracy, "test_nll": ensemble.nll(logprobs, y),
                   "test_accuracy": ensemble.accuracy(logprobs, y), "seconds": seconds,
                   "images_per_s": stats.images_per_s}
            rows.append(row)
            if epoch in cfg.save_epochs:
                extra[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            advance(f"loss {stats.loss:.3f} acc {stats.accuracy:.3f} test acc {row['test_accuracy']:.3f} "
                    f"{stats.images_per_s:.0f} img/s")
    last = rows[-1]
    result = {"seed": seed, "dataset": data.info.name, "model": spec["name"], "model_args": spec["args"],
              "epochs": cfg.epochs, "train_images": int(data.train.y.numel()),
              "train_loss": last["train_loss"], "train_accuracy": last["train_accuracy"],
              "test_nll": last["test_nll"], "test_accuracy": last["test_accuracy"],
              "test_error": 1 - last["test_accuracy"], "seconds": seconds,
              "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows), "device": str(device)}
    with atomic_dir(out) as tmp:
        save_checkpoint(tmp / "model.pt", spec, model.state_dict(), epoch=cfg.epochs, seed=seed)
        for epoch, state in extra.items():
            save_checkpoint(tmp / f"epoch_{epoch}.pt", spec, state, epoch=epoch, seed=seed)
        atomic_torch_save({"logprobs": logprobs, "labels": y}, tmp / "test_logprobs.pt")
        if data.val is not None:
            val_lp, val_y = predict(model, Loader(data.val, data.info, EVAL_BATCH, train=False), device)
            atomic_torch_save({"logprobs": val_lp, "labels": val_y}, tmp / "val_logprobs.pt")
    write_csv(log_csv, rows)
    write_json(metrics, result)
    return result


def main(
    seed: int = typer.Option(..., "--seed", help="Seed of this endpoint (one of train.seeds)."),
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    out: Path = typer.Option(None, "--out", help="Output folder [default: data/endpoints/seed_<seed>]."),
    metrics: Path = typer.Option(None, "--metrics", help="Metrics JSON [default: metrics/endpoints/seed_<seed>.json]."),
    log_csv: Path = typer.Option(None, "--log", help="Per-epoch CSV [default: metrics/endpoints/seed_<seed>.csv]."),
    device: str = DeviceOpt,
) -> None:
    """Train the endpoint network of one seed with the standard schedule (params: model, train)."""
    with user_errors():
        p = read_params(params)
        cfg = section(p, "train", TrainConfig)
        model_cfg = section(p, "model", ModelConfig)
        out = out or Path(f"data/endpoints/seed_{seed}")
        metrics = metrics or Path(f"metrics/endpoints/seed_{seed}.json")
        log_csv = log_csv or Path(f"metrics/endpoints/seed_{seed}.csv")
        t0 = time.perf_counter()
        result = train_one(cfg, model_cfg, seed, prepared, out, metrics, log_csv, device)
        console.print(f"[bold]seed {seed}[/]: test accuracy {result['test_accuracy']:.4f}, "
                      f"NLL {result['test_nll']:.4f} after {cfg.epochs} epochs "
                      f"({time.perf_counter() - t0:.0f} s, {result['images_per_s']:.0f} img/s) → {out}")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
