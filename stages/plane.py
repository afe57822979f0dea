"""Stage plane: train loss and test error over the plane of the endpoints and the bend (paper, Fig. 1).

The plane through ŵ1, ŵ2 and the curve's middle bend θ (control point
(n − 1) // 2; a quadratic Bezier lies in it) gets an orthonormal basis by
Gram-Schmidt (modeconn.plane). At each point of a ``plane.grid_points`` ×
``plane.grid_points`` grid covering the three points and the projected curve,
with margins of ``plane.margin`` × their extent on each side: BatchNorm
recalibration, then train loss (NLL + 0.5·wd·‖w‖², wd of the curve's
training) on ``plane.train_samples`` training images and test NLL/error. The
curve (at the t grid of eval_curve) and the segment are projected onto the
plane and drawn over log-scaled contours. The three points themselves are
measured too (their values go to metrics/plane.json).

The aligned segment of eval_curve (ŵ1 to π(ŵ2), ŵ2's units permuted into line with ŵ1; modeconn.align),
when ``aligned.pt`` is there, is drawn as its orthogonal projection onto the plane: π(ŵ2) is in general
not in the plane, so the contours under the drawn line are *not* the loss along it (that is in
eval_curve's tables). Its distance from the plane, t·dist(π(ŵ2)) at t (ŵ1 is in the plane), is reported
in ``aligned_off_plane``; the grid is not widened to cover the projection.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn import plane as pl
from modeconn.align import apply_permutation, permutation_spec
from modeconn.bn import has_bn
from modeconn.curves import load_curve
from modeconn.errors import CheckpointError
from modeconn.io import atomic_dir, atomic_torch_save, load_file
from modeconn.models import from_spec
from modeconn.paths import MEASURES, measure
from modeconn.plots import plane_contours
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.weights import flat

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import PlaneConfig, read_sections
from .kit.inputs import measurement_batches, prepared_data
from .kit.layout import CURVE_HINT
from .kit.records import write_metrics

POINTS = ("w1", "w2", "bend")


def curve_t(curve_eval: Path) -> torch.Tensor:
    """The t grid eval_curve measured the curve at (data/curve_eval/curve.pt, key "t")."""
    blob = load_file(curve_eval / "curve.pt", "curve evaluation", "Run `dvc repro eval_curve` to create it.")
    if not isinstance(blob, dict) or "t" not in blob:
        raise CheckpointError(f"{curve_eval / 'curve.pt'} has no t grid: rerun `dvc repro eval_curve`")
    return blob["t"].double()


def compute(
    cfg: PlaneConfig, prepared: Path, curve_dir: Path, curve_eval: Path, out: Path, runtime: Runtime
) -> tuple[dict, dict]:
    """The plane's summary metrics and run information; the grid goes to ``out``/grid.pt."""
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    ts = curve_t(curve_eval)  # (P,)
    wd = float(blob.get("wd", 0.0))
    points = curve.control_points()  # name -> (n, *shape)
    n, bend = curve.num_bends, (curve.num_bends - 1) // 2
    like = {k: v[0] for k, v in points.items()}
    w1, w2, theta = (flat({k: v[i] for k, v in points.items()}) for i in (0, n - 1, bend))
    b = pl.basis(w1, w2, theta)
    frame = (b.origin, b.u, b.v)
    curve_xy, segment_xy, off_plane = [], [], []  # one point at a time: P × |net| may not fit in memory
    for t in ts.tolist():
        with torch.no_grad():
            w = flat(curve.weights(t))
        curve_xy.append(pl.project(w, *frame))
        off_plane.append(pl.distance(w, *frame))
        segment_xy.append(pl.project((1 - t) * b.origin + t * w2.double(), *frame))
    curve_xy, segment_xy, off_plane = torch.stack(curve_xy), torch.stack(segment_xy), torch.stack(off_plane)
    # (P, 2), (P, 2), (P,)
    alpha, beta = pl.grid(torch.cat([b.coords, curve_xy]), cfg.grid_points, cfg.margin)

    template = runtime.prepare(from_spec(blob["spec"]))
    like = {k: v.to(runtime.device) for k, v in like.items()}
    data = prepared_data(prepared, runtime)
    batches = measurement_batches(data, cfg, runtime)._replace(val=None)
    aligned = aligned_projection(curve_eval, blob["spec"], points, data.test.x[:2].float().cpu(), ts, frame)

    def at(a: float, bb: float) -> dict:
        return measure(template, pl.to_weights(b.origin, b.u, b.v, a, bb, like), batches, runtime).row(wd)

    G = cfg.grid_points
    grids = {m: torch.full((G, G), float("nan"), dtype=torch.float64) for m in MEASURES}  # [α, β]
    log.info(
        "plane of a %s (%d bends, bend %d): %d × %d grid on %s, train loss over %d images, test over %d",
        blob["kind"],
        n,
        bend,
        G,
        G,
        data.info.name,
        batches.train.n,
        batches.test.n,
    )
    t0 = time.perf_counter()
    with progress("plane", G * G + len(POINTS)) as advance:
        at_points = {}
        for name, (a, bb) in zip(POINTS, b.coords.tolist()):
            at_points[name] = {"alpha": a, "beta": bb, **at(a, bb)}
            advance(f"{name}: test err {at_points[name]['test_error']:.4f}")
        for i, a in enumerate(alpha.tolist()):
            for j, bb in enumerate(beta.tolist()):
                r = at(a, bb)
                for m in MEASURES:
                    grids[m][i, j] = r[m]
                advance(f"α={a:.2f} β={bb:.2f} train loss {r['train_loss']:.3f} test err {r['test_error']:.3f}")
    seconds = time.perf_counter() - t0
    with atomic_dir(out) as tmp:
        atomic_torch_save(
            {
                "format": "modeconn.plane/1",
                "alpha": alpha,
                "beta": beta,
                **grids,
                "points": POINTS,
                "coords": b.coords,
                "t": ts,
                "curve": curve_xy,
                "segment": segment_xy,
                "curve_off_plane": off_plane,
                "bend_index": bend,
                "num_bends": n,
                "kind": blob["kind"],
                **({"aligned": aligned[0], "aligned_off_plane": aligned[1]} if aligned is not None else {}),
            },
            tmp / "grid.pt",
        )
    scale = b.coords[1, 0].item()  # ‖ŵ2 − ŵ1‖
    metrics = {
        "grid": {m: {"min": grids[m].min().item(), "max": grids[m].max().item()} for m in MEASURES},
        "points": at_points,
        "curve_off_plane": {"max_distance": off_plane.max().item(), "max_relative": off_plane.max().item() / scale},
        "endpoint_distance": scale,
    }
    if aligned is not None:  # the projection drawn is not the path: how far the aligned segment is from the plane
        xy, off, dist = aligned
        metrics["aligned_off_plane"] = {
            "max_distance": off.max().item(),
            "max_relative": off.max().item() / scale,
            "endpoint_alpha": xy[-1, 0].item(),
            "endpoint_beta": xy[-1, 1].item(),
            "endpoint_distance": dist,
        }
    run = {
        "grid_points": G,
        "margin": cfg.margin,
        "alpha": [alpha[0].item(), alpha[-1].item()],
        "beta": [beta[0].item(), beta[-1].item()],
        "dataset": data.info.name,
        "model": blob["spec"]["name"],
        "type": blob["kind"],
        "num_bends": n,
        "bend_index": bend,
        "aligned": aligned is not None,
        "endpoints": blob.get("endpoints"),
        "wd": wd,
        "bn_samples": batches.bn.n if has_bn(template) else 0,
        "train_samples": batches.train.n,
        "test_samples": batches.test.n,
        **runtime.as_dict(),
        "seconds": seconds,
        "seconds_per_point": seconds / (G * G + len(POINTS)),
    }
    return metrics, run


def aligned_projection(
    curve_eval: Path, spec: dict, points: dict, example: torch.Tensor, ts: torch.Tensor, frame: tuple
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The aligned segment of eval_curve projected onto the plane: (α, β) [P, 2] and distance from the plane [P]
    at the t grid, and ‖π(ŵ2) − ŵ1‖; None when eval_curve did not align (``eval.align: false``)."""
    file = curve_eval / "aligned.pt"
    if not file.exists():
        return None
    found = load_file(file, "aligned segment evaluation", "Run `dvc repro eval_curve` to create it.")
    perms = found.get("perms") if isinstance(found, dict) else None
    n = next(iter(points.values())).shape[0]
    ps = permutation_spec(from_spec(spec), example)
    if not isinstance(perms, dict) or {g: p.numel() for g, p in perms.items()} != ps.sizes:
        raise CheckpointError(f"{file}: its permutations do not fit this curve's model: rerun `dvc repro eval_curve`")
    w1 = flat({k: v[0] for k, v in points.items()})
    end = flat(apply_permutation(ps, {k: v[n - 1] for k, v in points.items()}, perms))  # π(ŵ2), flat
    # (1 − t) ŵ1 + t π(ŵ2) with ŵ1 the origin: its projection and its distance from the plane are linear in t
    xy, off = pl.project(end, *frame), pl.distance(end, *frame)  # (2,), ()
    return ts[:, None] * xy, ts * off, (end.double() - w1.double()).norm().item()


def figures(grid_file: Path, run: dict, train_png: Path, error_png: Path) -> None:
    g = load_file(grid_file, "plane grid", "Run `dvc repro plane` to create it.")
    s = run
    pts = {"ŵ1": g["coords"][0].tolist(), "ŵ2": g["coords"][1].tolist(), "θ (bend)": g["coords"][2].tolist()}
    where = f"{s['type']} ({s['num_bends']} bends), {s['model']} on {s['dataset']}"
    aligned = {}
    if "aligned" in g:  # a projection: the aligned segment leaves the plane (by t · dist(π(ŵ2)))
        off, scale = g["aligned_off_plane"].max().item(), g["coords"][1, 0].item()
        aligned = {
            "aligned": g["aligned"],
            "aligned_label": f"aligned segment, projected (off the plane by up to {off:.3g} = {off / scale:.0%} "
            "of ‖ŵ2 − ŵ1‖; contours not its loss)",
        }
    plane_contours(
        g["alpha"],
        g["beta"],
        g["train_loss"],
        pts,
        g["curve"],
        g["segment"],
        train_png,
        "train loss (with L2 term)",
        title=f"Train loss in the plane: {where}",
        **aligned,
    )
    plane_contours(
        g["alpha"],
        g["beta"],
        g["test_error"],
        pts,
        g["curve"],
        g["segment"],
        error_png,
        "test error",
        title=f"Test error in the plane: {where}",
        **aligned,
    )


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    curve_eval: Path = typer.Option(
        Path("data/curve_eval"),
        "--curve-eval",
        help="Folder written by eval_curve (its t grid is used to draw the curve).",
    ),
    out: Path = typer.Option(Path("data/plane"), "--out", help="Output folder (grid.pt)."),
    metrics: Path = typer.Option(Path("metrics/plane.json"), "--metrics", help="Summary JSON."),
    train_png: Path = typer.Option(
        Path("metrics/plane_train_loss.png"), "--train-figure", help="PNG of train loss contours."
    ),
    error_png: Path = typer.Option(
        Path("metrics/plane_test_error.png"), "--error-figure", help="PNG of test error contours."
    ),
    runtime: Runtime = CPU,
) -> None:
    """Measure train loss and test error over the plane of the endpoints and the bend (params: plane)."""
    (cfg,) = read_sections(params, "plane")
    summary, run = compute(cfg, prepared, curve, curve_eval, out, runtime)
    write_metrics(metrics, summary, run)
    figures(out / "grid.pt", run, train_png, error_png)
    p, g = summary["points"], summary["grid"]
    console.print(
        f"plane {cfg.grid_points}×{cfg.grid_points}: train loss {g['train_loss']['min']:.4f}–"
        f"{g['train_loss']['max']:.4f}, test error {g['test_error']['min']:.4f}–{g['test_error']['max']:.4f}; "
        f"test error at ŵ1 {p['w1']['test_error']:.4f}, ŵ2 {p['w2']['test_error']:.4f}, bend "
        f"{p['bend']['test_error']:.4f}; curve leaves the plane by at most "
        f"{summary['curve_off_plane']['max_distance']:.3g} ({run['seconds']:.0f} s) → {out / 'grid.pt'}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
