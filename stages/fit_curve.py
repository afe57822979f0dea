"""Stage fit_curve: train a Bezier curve or polygonal chain between two endpoints (paper, Sec. 3;
:func:`modeconn.curve_fit.fit_curve`).

The endpoints stay fixed; the interior bends start on the segment (or at the control points of the curve file
``curve.init``) and are trained with a fresh t ~ U(0, 1) per minibatch, under the standard LR schedule.
``curve.endpoint_files`` joins two checkpoints of your own instead (modeconn checkpoints, or plain state dicts
of the network of the ``model`` section): they must be of one architecture, fitted to the prepared data.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import typer

from modeconn.curve_fit import fit_curve
from modeconn.curves import Curve, load_curve, save_curve
from modeconn.io import same_architecture
from modeconn.models import from_spec
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import CurveConfig, check_batch_size, read_sections
from .kit.inputs import endpoint_checkpoint, prepared_data, train_loader, user_checkpoints
from .kit.layout import ENDPOINTS, endpoint_model, prepared_files
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


def load_endpoints(cfg: CurveConfig, endpoints: Path, params: Path, prepared: Path) -> tuple[dict, list, tuple]:
    """(spec, checkpoints, files) of the two networks the curve joins: ``curve.endpoint_files`` of the user's own,
    or the endpoints of the seeds ``curve.endpoints``; of one architecture."""
    if cfg.endpoint_files:
        files = tuple(map(Path, cfg.endpoint_files))
        ckpts = user_checkpoints(files, params, prepared, "curve.endpoint_files", new_head=False)
        names = (f"curve.endpoint_files: {cfg.endpoint_files[0]}", str(cfg.endpoint_files[1]))
        return same_architecture(ckpts, names, "a curve joins two networks of the same model"), ckpts, files
    files = tuple(endpoint_model(endpoints, s) for s in cfg.endpoints)
    ckpts = [endpoint_checkpoint(f) for f in files]
    names = (f"endpoints seed {cfg.endpoints[0]}", f"seed {cfg.endpoints[1]}")
    return same_architecture(ckpts, names, "retrain them with the same model section"), ckpts, files


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of the endpoints (train_endpoint)."),
    out: Path = typer.Option(Path("data/curve"), "--out", help="Output folder (curve.pt)."),
    metrics: Path = typer.Option(Path("metrics/curve_train.json"), "--metrics", help="Metrics JSON."),
    log_csv: Path = typer.Option(Path("metrics/curve_train.csv"), "--history", help="Per-epoch CSV."),
    runtime: Runtime = CPU,
) -> None:
    """Fit a curve between the endpoints curve.endpoints (params: curve)."""
    (cfg,) = read_sections(params, "curve")
    t0 = time.perf_counter()  # no folder made here: rank 0 creates `out` when it saves (a failed run leaves none)
    seed_everything(cfg.seed)
    spec, (w1, w2), files = load_endpoints(cfg, endpoints, params, prepared)
    names = list(cfg.endpoint_files) or list(cfg.endpoints)  # what the curve joins: files, or seeds
    data = prepared_data(prepared, runtime)
    check_batch_size("curve.batch_size", cfg.batch_size, len(data.train), prepared)
    curve = Curve(from_spec(spec), w1["state_dict"], w2["state_dict"], cfg.type, cfg.num_bends)
    if cfg.init != "linear":
        init, _ = load_curve(Path(cfg.init), from_spec, hint="curve.init must be 'linear' or a curve file.")
        curve.load_control_points(init.control_points(), cfg.init)
        files += (Path(cfg.init),)
    curve = runtime.prepare(curve)
    batches = train_loader(data, cfg.batch_size, cfg.seed, runtime)
    inputs = (*prepared_files(prepared), *files)
    resume = resume_state("fit_curve", runtime, cfg, {"spec": spec}, inputs=inputs)  # a plain file: params' model
    joins = " and ".join(f"seed {n}" if isinstance(n, int) else str(n) for n in names)
    log.info(f"fitting a {cfg.type} ({cfg.num_bends} bends) between {joins}: {cfg.epochs} epochs on {data.info.name}")
    sgd = dict(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd, seed=cfg.seed)
    report = functools.partial(progress, "fit_curve")
    history = fit_curve(curve, batches, **sgd, runtime=runtime, resume=resume, progress=report)
    if not runtime.is_main:  # rank 0 writes; the others only trained
        return
    save_curve(out / "curve.pt", curve, spec, endpoints=names, wd=cfg.wd)
    result = {k: history.rows[-1][k] for k in ("train_loss", "train_accuracy")}
    run = dict(type=cfg.type, num_bends=cfg.num_bends, endpoints=names, dataset=data.info.name, model=spec["name"])
    run.update(epochs=cfg.epochs, **history.timing(), **runtime.as_dict())
    write_csv(log_csv, history.rows)
    write_metrics(metrics, result, run)
    resume.clear()
    console.print(
        f"[bold]{cfg.type}[/] ({cfg.num_bends} bends) between {names[0]} and {names[1]}: train loss at random t "
        f"{result['train_loss']:.4f} after {cfg.epochs} epochs ({time.perf_counter() - t0:.0f} s) → {out / 'curve.pt'}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
