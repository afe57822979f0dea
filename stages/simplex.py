"""Stage simplex: a loss-surface simplex from one endpoint (SPRO, Benton et al. 2021; modeconn.simplex.fit_simplex).

Its fixed vertex is seed ``--seed``'s endpoint checkpoint at epoch ``simplex.start_epoch`` (by default FGE's start,
epoch 4 of B = 6: the simplex's ``simplex.epochs`` then finish the budget of one run, as an FGE run's do), or the
``--seed``-th file of ``simplex.start_files`` (checkpoints of your own, own/); its
``simplex.free`` free vertices start there and are trained with a fresh α ~ Dirichlet(1) per minibatch and the
volume regulariser ``simplex.volume_weight``. Then each vertex and ``simplex.samples`` points drawn uniformly from
the simplex are measured, BatchNorm recalibrated at each (:func:`modeconn.simplex.measure_simplex`). Writes the
simplex (simplex.pt), the sampled points' test and validation predictions (predictions.pt: ESPRO's members,
which ``compare`` costs at ``start_epoch + epochs`` per simplex), the summary JSON (volume, vertices, the
interior's mean ± std, the sampled points' ensemble) and one row per point.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
import typer

from modeconn.data import eval_batches
from modeconn.io import atomic_dir, atomic_torch_save
from modeconn.models import from_spec
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.simplex import Simplex, fit_simplex, measure_simplex, save_simplex

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import check_batch_size, read_sections, require
from .kit.inputs import endpoint_checkpoint, prepared_data, train_loader, user_checkpoints
from .kit.layout import ENDPOINTS, endpoint_checkpoint_at, prepared_files, simplex_run
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


def main(
    seed: int = typer.Option(..., "--seed", help="The endpoint seed whose checkpoint is the fixed vertex."),
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of the endpoints (train_endpoint)."),
    out: Path = typer.Option(Path("data/simplex/seed_0"), "--out", help="Output folder (simplex.pt, predictions.pt)."),
    metrics: Path = typer.Option(Path("metrics/simplex/seed_0.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/simplex/seed_0.csv"), "--table", help="One row per measured point."),
    runtime: Runtime = CPU,
) -> None:
    """Fit a simplex from one endpoint and measure its vertices and sampled interior points (params: simplex)."""
    (cfg,) = read_sections(params, "simplex")
    t0 = time.perf_counter()
    seed_everything(cfg.seed + seed)
    if cfg.start_files:  # checkpoints of your own (own/): simplex r starts from the r-th file
        key = f"simplex.start_files[{seed}]"
        require(seed < len(cfg.start_files), f"--seed {seed}: {key} does not exist ({len(cfg.start_files)} files)")
        path = Path(cfg.start_files[seed])
        ckpt = user_checkpoints([path], params, prepared, key, new_head=False)[0]
    else:
        path = endpoint_checkpoint_at(endpoints, seed, cfg.start_epoch, "simplex.start_epoch")
        ckpt = endpoint_checkpoint(path)
    data = prepared_data(prepared, runtime)
    check_batch_size("simplex.batch_size", cfg.batch_size, len(data.train), prepared)
    template = from_spec(ckpt["spec"])
    fixed = {n: ckpt["state_dict"][n] for n, _ in template.named_parameters()}  # parameters only
    simplex = runtime.prepare(Simplex(template, [fixed], cfg.free))
    inputs = (*prepared_files(prepared), path)
    resume = resume_state(simplex_run(seed), runtime, cfg, {"spec": ckpt["spec"], "seed": seed}, inputs=inputs)
    log.info(f"simplex from {path} and {cfg.free} free vertices: {cfg.epochs} epochs on {data.info.name}")
    sgd = dict(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd, volume_weight=cfg.volume_weight)
    sgd.update(seed=cfg.seed + seed, runtime=runtime, resume=resume, progress=functools.partial(progress, "simplex"))
    history = fit_simplex(simplex, train_loader(data, cfg.batch_size, cfg.seed + seed, runtime), **sgd)
    sizes = dict(bn_samples=cfg.bn_samples, train_samples=cfg.train_samples, seed=cfg.seed)
    measuring = eval_batches(data, cfg.eval_batch_size, **sizes, channels_last=runtime.channels_last)
    points = torch.Generator().manual_seed(cfg.seed + seed)  # the interior points measured: ESPRO's members
    with progress("simplex points", simplex.num_vertices + cfg.samples) as advance:
        m = measure_simplex(simplex, cfg.samples, points, measuring, runtime, advance)
    cost = cfg.start_epoch + cfg.epochs  # every epoch spent on this simplex, its fixed vertex's training included
    with atomic_dir(out) as tmp:
        kept = dict(seed=seed, start_epoch=cfg.start_epoch, epochs=cfg.epochs)
        save_simplex(tmp / "simplex.pt", simplex, ckpt["spec"], **kept)
        atomic_torch_save({**m.predictions(), "seed": seed, "cost": cost}, tmp / "predictions.pt")
    summary = m.summary(cfg.wd)
    run = dict(seed=seed, start=str(path), start_epoch=cfg.start_epoch, free=cfg.free, epochs=cfg.epochs, cost=cost)
    run.update(lr=cfg.lr, volume_weight=cfg.volume_weight, samples=cfg.samples, dataset=data.info.name)
    run.update(model=ckpt["spec"]["name"], **history.timing(), **runtime.as_dict())
    write_csv(table, m.rows(cfg.wd))
    write_metrics(metrics, summary, run)
    resume.clear()
    v, i = summary["vertex_mean"], summary["interior"]["test_error"]
    console.print(
        f"simplex from seed {seed}: volume {summary['volume']:.3g}; test error at the vertices {v['test_error']:.4f} "
        f"(mean), at {cfg.samples} interior points {i['mean']:.4f} ± {i['std']:.4f}; their ensemble "
        f"{summary['interior_ensemble']['test_error']:.4f} ({time.perf_counter() - t0:.0f} s) → {out}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
