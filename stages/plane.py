"""Stage plane: train loss and test error over the plane of the endpoints and the bend (paper, Fig. 1).

:func:`modeconn.plane.measure_plane` on a ``plane.grid_points``² grid with margins ``plane.margin``; the curve at
eval_curve's t grid, the segment and (where eval_curve aligned) the aligned segment's projection drawn over
log-scaled contours.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn.align import apply_permutation, permutation_spec
from modeconn.bn import has_bn
from modeconn.curves import Curve, load_curve
from modeconn.errors import CheckpointError
from modeconn.io import atomic_dir, atomic_torch_save, load_file
from modeconn.models import from_spec
from modeconn.plane import POINTS, measure_plane
from modeconn.plots import plane_figures
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import read_sections
from .kit.inputs import measurement_batches, prepared_data
from .kit.layout import CURVE_EVAL_HINT, CURVE_HINT
from .kit.records import write_metrics


def from_eval_curve(
    curve_eval: Path, spec: dict, curve: Curve, example: torch.Tensor
) -> tuple[torch.Tensor, dict | None]:
    """eval_curve's t grid [P] (curve.pt) and π(ŵ2), its aligned endpoint, as parameters (aligned.pt's permutations
    applied to ŵ2; None when eval_curve did not align, ``eval.align: false``)."""
    blob, file = load_file(curve_eval / "curve.pt", "curve evaluation", CURVE_EVAL_HINT), curve_eval / "aligned.pt"
    if not isinstance(blob, dict) or "t" not in blob:
        raise CheckpointError(f"{curve_eval / 'curve.pt'} has no t grid: rerun `dvc repro eval_curve`")
    if not file.exists():
        return blob["t"].double(), None
    found = load_file(file, "aligned segment evaluation", CURVE_EVAL_HINT)
    perms = found.get("perms") if isinstance(found, dict) else None
    ps = permutation_spec(from_spec(spec), example)
    if not isinstance(perms, dict) or {g: p.numel() for g, p in perms.items()} != ps.sizes:
        raise CheckpointError(f"{file}: its permutations do not fit this curve's model: rerun `dvc repro eval_curve`")
    return blob["t"].double(), apply_permutation(ps, {k: v[-1] for k, v in curve.control_points().items()}, perms)


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve_dir: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    curve_eval: Path = typer.Option(Path("data/curve_eval"), "--curve-eval", help="Folder written by eval_curve."),
    out: Path = typer.Option(Path("data/plane"), "--out", help="Output folder (grid.pt)."),
    metrics: Path = typer.Option(Path("metrics/plane.json"), "--metrics", help="Summary JSON."),
    train_png: Path = typer.Option(Path("metrics/plane_train_loss.png"), "--train-figure", help="Train loss PNG."),
    error_png: Path = typer.Option(Path("metrics/plane_test_error.png"), "--error-figure", help="Test error PNG."),
    runtime: Runtime = CPU,
) -> None:
    """Measure train loss and test error over the plane of the endpoints and the bend (params: plane)."""
    (cfg,) = read_sections(params, "plane")
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    wd, G, n = float(blob.get("wd", 0.0)), cfg.grid_points, curve.num_bends
    template = runtime.prepare(from_spec(blob["spec"]))
    data = prepared_data(prepared, runtime)
    batches = measurement_batches(data, cfg, runtime)
    ts, end = from_eval_curve(curve_eval, blob["spec"], curve, data.test.x[:2].float().cpu())  # (P,), π(ŵ2)
    images = f"on {data.info.name}, train loss over {batches.train.n} images, test over {batches.test.n}"
    log.info(f"plane of a {blob['kind']} ({n} bends, bend {(n - 1) // 2}): {G} × {G} grid {images}")
    t0, grid = time.perf_counter(), dict(grid_points=G, margin=cfg.margin, wd=wd, aligned_end=end)
    with progress("plane", G * G + len(POINTS)) as advance:
        r = measure_plane(curve, template, ts, batches, runtime, **grid, progress=advance)
    seconds, g = time.perf_counter() - t0, r.as_dict()
    with atomic_dir(out) as tmp:
        atomic_torch_save(g, tmp / "grid.pt")
    summary = r.summary()
    run = dict(grid_points=G, margin=cfg.margin, **r.extent(), dataset=data.info.name, model=blob["spec"]["name"])
    run.update(type=blob["kind"], num_bends=n, bend_index=r.bend_index, aligned=end is not None)
    run.update(endpoints=blob.get("endpoints"), wd=wd, bn_samples=batches.bn.n if has_bn(template) else 0)
    run.update(train_samples=batches.train.n, test_samples=batches.test.n, **runtime.as_dict(), seconds=seconds)
    write_metrics(metrics, summary, {**run, "seconds_per_point": seconds / (G * G + len(POINTS))})
    plane_figures(g, train_png, error_png, f"{blob['kind']} ({n} bends), {run['model']} on {run['dataset']}")
    p, gr = summary["points"], summary["grid"]
    console.print(
        f"plane {G}×{G}: train loss {gr['train_loss']['min']:.4f}–{gr['train_loss']['max']:.4f}, test error "
        f"{gr['test_error']['min']:.4f}–{gr['test_error']['max']:.4f}; test error at ŵ1 {p['w1']['test_error']:.4f}, "
        f"ŵ2 {p['w2']['test_error']:.4f}, bend {p['bend']['test_error']:.4f}; curve leaves the plane by at most "
        f"{summary['curve_off_plane']['max_distance']:.3g} ({seconds:.0f} s) → {out / 'grid.pt'}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
