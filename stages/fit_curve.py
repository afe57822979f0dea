"""Stage fit_curve: train a Bezier curve or polygonal chain between two endpoints (paper, Sec. 3).

The endpoints stay fixed; the interior bends start on the segment and are
trained by SGD on L(φ_θ(t)) + 0.5·wd·‖φ_θ(t)‖² with a fresh t ~ U(0, 1) per
minibatch, under the same standard LR schedule as endpoint training.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import typer

from modeconn import schedules
from modeconn.curves import Curve, check_curve_args, curve_loss, load_curve, save_curve
from modeconn.data import Loader
from modeconn.errors import CheckpointError
from modeconn.io import load_checkpoint
from modeconn.train import make_sgd, prepare_module, resolve_device, seed_everything, train_epoch

from .common import (check_sgd, ENDPOINTS, DeviceOpt, ParamsOpt, PreparedOpt, build_model, console, load_prepared, log,
                     progress, read_params, require, section, user_errors, write_csv, write_json)


@dataclasses.dataclass(frozen=True)
class CurveConfig:
    """``curve``: the path between two endpoints (paper: 3 bends, 600 ep lr 0.015 VGG / 200 ep lr 0.03)."""

    endpoints: tuple[int, ...]
    type: str = "bezier"
    num_bends: int = 3
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.015
    momentum: float = 0.9
    wd: float = 5e-4
    seed: int = 0
    init: str = "linear"

    def __post_init__(self):
        require(len(self.endpoints) == 2, f"curve.endpoints must name two seeds, got {list(self.endpoints)}")
        require(self.endpoints[0] != self.endpoints[1],
                f"curve.endpoints names seed {self.endpoints[0]} twice: a curve joins two different networks")
        check_curve_args(self.type, self.num_bends)
        require(self.epochs >= 1, f"curve.epochs must be at least 1, got {self.epochs}")
        check_sgd("curve", self)


def load_endpoints(endpoints_dir: Path, seeds) -> tuple[dict, list[dict]]:
    """The two endpoint checkpoints; their specs must match (same architecture and arguments)."""
    hint = "Run `dvc repro train_endpoint` (curve.endpoints must be among train.seeds)."
    ckpts = [load_checkpoint(endpoints_dir / f"seed_{s}" / "model.pt", hint) for s in seeds]
    a, b = ckpts
    if a["spec"] != b["spec"]:
        raise CheckpointError(
            f"endpoints seed {seeds[0]} and seed {seeds[1]} are of different architectures "
            f"({a['spec']} vs {b['spec']}): retrain them with the same model section"
        )
    return a["spec"], ckpts


def fit(cfg: CurveConfig, prepared: Path, endpoints_dir: Path, out: Path, metrics: Path, log_csv: Path,
        device_name: str) -> dict:
    device = resolve_device(device_name)
    seed_everything(cfg.seed)
    spec, (a, b) = load_endpoints(endpoints_dir, cfg.endpoints)
    data = load_prepared(prepared, device)
    curve = Curve(build_model(spec), a["state_dict"], b["state_dict"], cfg.type, cfg.num_bends)
    if cfg.init != "linear":
        init, _ = load_curve(Path(cfg.init), build_model, hint="curve.init must be 'linear' or a curve file.")
        curve.load_control_points(init.control_points(), cfg.init)
    curve = prepare_module(curve, device)
    channels_last = device.type == "cuda"
    batches = Loader(data.train, data.info, cfg.batch_size, train=True, seed=cfg.seed, drop_last=True,
                     channels_last=channels_last)
    optimizer = make_sgd(curve.bends.parameters(), cfg.lr, cfg.momentum, 0.0)  # wd acts on φ(t), not θ
    total = cfg.epochs * len(batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, cfg.lr)  # noqa: E731
    generator = torch.Generator().manual_seed(cfg.seed)
    step = curve_loss(curve, cfg.wd, generator)
    rows, iteration, seconds = [], 1, 0.0
    log.info("fitting a %s with %d bends between seeds %d and %d: %d epochs on %s, device %s", cfg.type,
             cfg.num_bends, *cfg.endpoints, cfg.epochs, data.info.name, device)
    with progress("fit_curve", cfg.epochs) as advance:
        for epoch in range(1, cfg.epochs + 1):
            curve.template.train()
            stats, iteration = train_epoch(step, optimizer, batches, lr_at, iteration, device, what="curve training")
            seconds += stats.seconds
            rows.append({"epoch": epoch, "lr": lr_at(iteration - 1), "train_loss": stats.loss,
                         "train_accuracy": stats.accuracy, "seconds": seconds,
                         "images_per_s": stats.images_per_s})
            advance(f"loss at random t {stats.loss:.3f} acc {stats.accuracy:.3f} {stats.images_per_s:.0f} img/s")
    save_curve(out / "curve.pt", curve, spec, endpoints=list(cfg.endpoints), wd=cfg.wd)
    result = {"type": cfg.type, "num_bends": cfg.num_bends, "endpoints": list(cfg.endpoints),
              "dataset": data.info.name, "model": spec["name"], "epochs": cfg.epochs,
              "train_loss": rows[-1]["train_loss"], "train_accuracy": rows[-1]["train_accuracy"],
              "seconds": seconds, "seconds_per_epoch": seconds / cfg.epochs,
              "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows), "device": str(device)}
    write_csv(log_csv, rows)
    write_json(metrics, result)
    return result


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of endpoint checkpoints (seed_<s>/model.pt)."),
    out: Path = typer.Option(Path("data/curve"), "--out", help="Output folder (curve.pt)."),
    metrics: Path = typer.Option(Path("metrics/curve_train.json"), "--metrics", help="Metrics JSON."),
    log_csv: Path = typer.Option(Path("metrics/curve_train.csv"), "--log", help="Per-epoch CSV."),
    device: str = DeviceOpt,
) -> None:
    """Fit a curve between the endpoints curve.endpoints (params: curve)."""
    with user_errors():
        cfg = section(read_params(params), "curve", CurveConfig)
        t0 = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        result = fit(cfg, prepared, endpoints, out, metrics, log_csv, device)
        console.print(f"[bold]{cfg.type}[/] ({cfg.num_bends} bends) between seeds {cfg.endpoints[0]} and "
                      f"{cfg.endpoints[1]}: train loss at random t {result['train_loss']:.4f} after "
                      f"{cfg.epochs} epochs ({time.perf_counter() - t0:.0f} s) → {out / 'curve.pt'}")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
