"""Stage curvature: the top Hessian eigenvalue and the Hessian trace of the training loss along each path.

At ``curvature.num_points`` equally spaced t of the fitted curve, of its straight segment and, with ``eval.align``,
of the aligned segment ŵ1 → π(ŵ2) (the permutation eval_curve finds, found again from the same seed), BatchNorm
recalibrated at each point: λ_max by Lanczos (at most ``curvature.iters`` products) and tr(H) by Hutchinson
(``curvature.probes`` probes) of the training loss (cross-entropy: the data's Hessian, PyHessian's, without the
L2 term, which would add wd to every eigenvalue and wd·P to the trace) over one fixed subset of
``curvature.train_samples`` training images (:func:`modeconn.curvature.curvature_paths`; products in float32 under
any precision). The ends, shared by the curve and its segment, are measured once. Data-parallel where training is
($MODECONN_NPROC): each process takes its shard of every Hessian batch, the products are summed over them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn.bn import has_bn
from modeconn.curvature import Shard, curvature_paths, curvature_summary
from modeconn.curves import load_curve, segment_of
from modeconn.errors import ModeconnError
from modeconn.models import from_spec
from modeconn.path import aligned_segment
from modeconn.plots import curvature_along_t
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import read_sections
from .kit.inputs import measurement_batches, prepared_data
from .kit.layout import CURVE_HINT
from .kit.records import write_csv, write_metrics

TOL = 1e-3  # Lanczos stops when its residual is below TOL·|λ| (the library's default)


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve_dir: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    metrics: Path = typer.Option(Path("metrics/curvature.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/curvature.csv"), "--table", help="One row per path and t."),
    figure: Path = typer.Option(Path("metrics/curvature_along_t.png"), "--figure", help="PNG: loss and curvature."),
    runtime: Runtime = CPU,
) -> None:
    """Measure the top Hessian eigenvalue and trace along the curve and the segments (params: curvature, eval)."""
    cfg, ev = read_sections(params, "curvature", "eval")
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    paths = {"curve": runtime.prepare(curve), "segment": runtime.prepare(segment_of(curve, from_spec(blob["spec"])))}
    data = prepared_data(prepared, runtime)
    if ev.align:
        try:
            aligned, _, _ = aligned_segment(
                curve, lambda: from_spec(blob["spec"]), data.test.x[:2].float().cpu(), ev.seed
            )
        except ModeconnError as e:  # the library says what it cannot align; the way out is the pipeline's
            raise ModeconnError(f"{e}; set eval.align: false in {params} to skip the aligned segment") from e
        paths["aligned"] = runtime.prepare(aligned)
    batches = measurement_batches(data, cfg, runtime)
    loss_batches = Shard(batches.train, *runtime.shard) if runtime.world_size > 1 else batches.train
    ts = torch.linspace(0, 1, cfg.num_points).tolist()
    log.info(
        f"curvature of the train loss over {batches.train.n} images at {cfg.num_points} points of t on "
        f"{', '.join(paths)} (≤ {cfg.iters} Lanczos steps, {cfg.probes} probes per point)"
    )
    options = dict(iters=cfg.iters, tol=TOL, probes=cfg.probes, seed=cfg.seed)
    with progress("curvature", len(paths) * cfg.num_points) as advance:
        tables = curvature_paths(paths, ts, batches.bn, loss_batches, runtime, progress=advance, **options)
    if not runtime.is_main:  # rank 0 writes; the others took their shares of the products
        return
    rows = [{"path": name, **row} for name, t in tables.items() for row in t.to_dict("records")]
    summary = curvature_summary(tables)
    run = dict(dataset=data.info.name, model=blob["spec"]["name"], type=blob["kind"], paths=list(paths))
    run.update(num_points=cfg.num_points, train_samples=batches.train.n, iters=cfg.iters, tol=TOL, probes=cfg.probes)
    run.update(bn_samples=batches.bn.n if has_bn(curve.template) else 0, seed=cfg.seed)
    write_csv(table, rows)
    write_metrics(metrics, summary, {**run, **runtime.as_dict(), "seconds": time.perf_counter() - t0})
    curvature_along_t(rows, figure, title=f"{run['type']} vs segment, {run['model']} on {run['dataset']}")
    e, c = summary["endpoints"], summary["curve"]["top_eigenvalue"]
    console.print(
        f"λ_max at the endpoints {e['top_eigenvalue']:.4g} (mean), along the curve up to {c['max']:.4g} "
        f"(t = {c['max_t']:.2f}); tr(H) at the endpoints {e['trace']:.4g} ({time.perf_counter() - t0:.0f} s) → {table}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
