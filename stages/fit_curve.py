"""Stage fit_curve: train a Bezier curve or polygonal chain between two endpoints (paper, Sec. 3).

The endpoints stay fixed; the interior bends start on the segment and are
trained by SGD on L(φ_θ(t)) + 0.5·wd·‖φ_θ(t)‖² with a fresh t ~ U(0, 1) per
minibatch, under the same standard LR schedule as endpoint training.

``curve.endpoint_files`` joins two checkpoints of your own instead (modeconn checkpoints, or plain state dicts
of the network of the ``model`` section): they must be of one architecture, fitted to the prepared data.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn import schedules
from modeconn.curves import Curve, curve_loss, load_curve, save_curve
from modeconn.errors import CheckpointError
from modeconn.models import from_spec
from modeconn.resume import capture, restore
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.train import make_sgd, train_epoch

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import CurveConfig, check_batch_size, read_sections
from .kit.inputs import endpoint_checkpoint, prepared_data, train_loader, user_checkpoints
from .kit.layout import ENDPOINTS, prepared_files
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


def same_architecture(ckpts: list[dict], names: tuple[str, str], hint: str) -> tuple[dict, list[dict]]:
    """(spec, ckpts) of two checkpoints whose specs match (same architecture and arguments); else a clear error."""
    a, b = ckpts
    if a["spec"] != b["spec"]:
        raise CheckpointError(
            f"{names[0]} and {names[1]} are of different architectures ({a['spec']} vs {b['spec']}): {hint}"
        )
    return a["spec"], ckpts


def load_endpoints(endpoints_dir: Path, seeds) -> tuple[dict, list[dict]]:
    """The two endpoint checkpoints of the seeds; their specs must match."""
    ckpts = [endpoint_checkpoint(endpoints_dir / f"seed_{s}" / "model.pt") for s in seeds]
    names = (f"endpoints seed {seeds[0]}", f"seed {seeds[1]}")
    return same_architecture(ckpts, names, "retrain them with the same model section")


def load_endpoint_files(files, params: Path, prepared: Path) -> tuple[dict, list[dict]]:
    """``curve.endpoint_files``: two checkpoints of the user's own, of one architecture."""
    ckpts = user_checkpoints(files, params, prepared, "curve.endpoint_files", new_head=False)
    names = (f"curve.endpoint_files: {files[0]}", str(files[1]))
    return same_architecture(ckpts, names, "a curve joins two networks of the same model")


def endpoint_inputs(cfg: CurveConfig, endpoints_dir: Path) -> tuple[Path, ...]:
    """The two endpoint files the curve joins (what the resume fingerprint reads)."""
    if cfg.endpoint_files:
        return tuple(map(Path, cfg.endpoint_files))
    return tuple(endpoints_dir / f"seed_{s}" / "model.pt" for s in cfg.endpoints)


def fit(
    cfg: CurveConfig,
    prepared: Path,
    endpoints_dir: Path,
    out: Path,
    metrics: Path,
    log_csv: Path,
    runtime: Runtime,
    params: Path = Path("params.yaml"),
) -> dict:
    seed_everything(cfg.seed)
    if cfg.endpoint_files:
        spec, (a, b) = load_endpoint_files(cfg.endpoint_files, params, prepared)
    else:
        spec, (a, b) = load_endpoints(endpoints_dir, cfg.endpoints)
    names = list(cfg.endpoint_files) or list(cfg.endpoints)  # what the curve joins: files, or seeds
    data = prepared_data(prepared, runtime)
    check_batch_size("curve.batch_size", cfg.batch_size, len(data.train), prepared)
    curve = Curve(from_spec(spec), a["state_dict"], b["state_dict"], cfg.type, cfg.num_bends)
    if cfg.init != "linear":
        init, _ = load_curve(Path(cfg.init), from_spec, hint="curve.init must be 'linear' or a curve file.")
        curve.load_control_points(init.control_points(), cfg.init)
    curve = runtime.prepare(curve)
    batches = train_loader(data, cfg.batch_size, cfg.seed, runtime)
    optimizer = make_sgd([curve.bends], cfg.lr, cfg.momentum, 0.0)  # wd acts on φ(t), not θ
    total = cfg.epochs * len(batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, cfg.lr)  # noqa: E731
    generator = torch.Generator().manual_seed(cfg.seed)  # the t of each minibatch
    step = curve_loss(curve, cfg.wd, generator, module=runtime.wrap(curve))  # data-parallel under torchrun
    inputs = (*prepared_files(prepared), *endpoint_inputs(cfg, endpoints_dir))
    if cfg.init != "linear":
        inputs += (Path(cfg.init),)
    resume = resume_state("fit_curve", runtime, cfg, {"spec": spec}, inputs=inputs)  # a plain file: params' model
    saved = resume.load()
    rows, iteration, seconds, done = [], 1, 0.0, 0
    if saved is not None:
        iteration = restore(saved, curve, optimizer, batches.generator, generator)
        rows, seconds, done = saved["rows"], saved["seconds"], saved["epoch"]
    log.info(
        "fitting a %s with %d bends between %s and %s: %d epochs on %s%s",
        cfg.type,
        cfg.num_bends,
        *(f"seed {n}" if isinstance(n, int) else n for n in names),
        cfg.epochs,
        data.info.name,
        f", resuming after epoch {done}" if done else "",
    )
    with progress("fit_curve", cfg.epochs - done) as advance:
        for epoch in range(done + 1, cfg.epochs + 1):
            curve.template.train()
            stats, iteration = train_epoch(step, optimizer, batches, lr_at, iteration, runtime, what="curve training")
            seconds += stats.seconds
            rows.append(
                {
                    "epoch": epoch,
                    "lr": lr_at(iteration - 1),
                    "train_loss": stats.loss,
                    "train_accuracy": stats.accuracy,
                    "seconds": seconds,
                    "images_per_s": stats.images_per_s,
                }
            )
            resume.epoch_done(
                epoch,
                {
                    **capture(curve, optimizer, iteration, batches.generator, generator),
                    "rows": rows,
                    "seconds": seconds,
                },
            )
            advance(f"loss at random t {stats.loss:.3f} acc {stats.accuracy:.3f} {stats.images_per_s:.0f} img/s")
    if not runtime.is_main:  # rank 0 writes; the others only trained
        return {}
    save_curve(out / "curve.pt", curve, spec, endpoints=names, wd=cfg.wd)
    result = {"train_loss": rows[-1]["train_loss"], "train_accuracy": rows[-1]["train_accuracy"]}
    run = {
        "type": cfg.type,
        "num_bends": cfg.num_bends,
        "endpoints": names,
        "dataset": data.info.name,
        "model": spec["name"],
        "epochs": cfg.epochs,
        "resumed_after_epoch": done,
        "seconds": seconds,
        "seconds_per_epoch": seconds / cfg.epochs,
        "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
        **runtime.as_dict(),
    }
    write_csv(log_csv, rows)
    write_metrics(metrics, result, run)
    resume.clear()
    return {**result, **run}


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(
        ENDPOINTS, "--endpoints", help="Folder of endpoint checkpoints (seed_<s>/model.pt)."
    ),
    out: Path = typer.Option(Path("data/curve"), "--out", help="Output folder (curve.pt)."),
    metrics: Path = typer.Option(Path("metrics/curve_train.json"), "--metrics", help="Metrics JSON."),
    log_csv: Path = typer.Option(Path("metrics/curve_train.csv"), "--history", help="Per-epoch CSV."),
    runtime: Runtime = CPU,
) -> None:
    """Fit a curve between the endpoints curve.endpoints (params: curve)."""
    (cfg,) = read_sections(params, "curve")
    t0 = time.perf_counter()  # no folder made here: rank 0 creates `out` when it saves (a failed run leaves none)
    result = fit(cfg, prepared, endpoints, out, metrics, log_csv, runtime, params=params)
    if not runtime.is_main:
        return
    console.print(
        f"[bold]{cfg.type}[/] ({cfg.num_bends} bends) between {result['endpoints'][0]} and "
        f"{result['endpoints'][1]}: train loss at random t {result['train_loss']:.4f} after "
        f"{cfg.epochs} epochs ({time.perf_counter() - t0:.0f} s) → {out / 'curve.pt'}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
