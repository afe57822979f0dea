"""Stage plane_points: train loss and test error over the plane through three networks (paper, Fig. 1 left).

:func:`modeconn.plane.measure_points_plane` through the three networks ``plane_points.points`` (endpoint seeds, or
checkpoint files of your own; by default the independent endpoints of seeds 0, 1, 2) on a
``plane_points.grid_points``² grid with margins ``plane_points.margin``, the triangle's sides drawn over log-scaled
contours. The train loss has the endpoints' L2 term (``train.wd``).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from modeconn.bn import has_bn
from modeconn.errors import CheckpointError
from modeconn.io import atomic_dir, atomic_torch_save, same_architecture
from modeconn.models import from_spec
from modeconn.plane import measure_points_plane
from modeconn.plots import plane_figures
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import PlanePointsConfig, read_sections
from .kit.inputs import endpoint_checkpoint, measurement_batches, prepared_data, user_checkpoints
from .kit.layout import ENDPOINT_HINT, ENDPOINTS, endpoint_model
from .kit.records import write_metrics


def load_points(cfg: PlanePointsConfig, endpoints: Path, params: Path, prepared: Path) -> tuple[dict, dict]:
    """(spec, name → checkpoint) of the three networks of ``plane_points.points``: ``seed_<s>`` for an endpoint,
    the path for a file; a CheckpointError naming the key where one is missing or of another architecture."""
    ckpts = {}
    for i, p in enumerate(cfg.points):
        key = f"plane_points.points[{i}]"
        if "seed" in p:
            path = endpoint_model(endpoints, p["seed"])
            if not path.is_file():
                raise CheckpointError(
                    f"{key}.seed: no endpoint of seed {p['seed']} ({path} not found). {ENDPOINT_HINT}"
                )
            ckpts[f"seed_{p['seed']}"] = endpoint_checkpoint(path)
        else:
            ckpts[p["file"]] = user_checkpoints([Path(p["file"])], params, prepared, f"{key}.file", new_head=False)[0]
    hint = "the plane runs through networks of one model"
    spec = same_architecture(list(ckpts.values()), [f"plane_points.points: {n}" for n in ckpts], hint)
    return spec, ckpts


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of the endpoints (train_endpoint)."),
    out: Path = typer.Option(Path("data/plane_points"), "--out", help="Output folder (grid.pt)."),
    metrics: Path = typer.Option(Path("metrics/plane_points.json"), "--metrics", help="Summary JSON."),
    train_png: Path = typer.Option(Path("metrics/plane_points_train_loss.png"), "--train-figure", help="Train loss."),
    error_png: Path = typer.Option(Path("metrics/plane_points_test_error.png"), "--error-figure", help="Test error."),
    runtime: Runtime = CPU,
) -> None:
    """Measure train loss and test error over the plane through three networks (params: plane_points, train.wd)."""
    cfg, train = read_sections(params, "plane_points", "train")
    seed_everything(cfg.seed)
    spec, ckpts = load_points(cfg, endpoints, params, prepared)
    template = runtime.prepare(from_spec(spec))
    names = [n for n, _ in template.named_parameters()]
    points = {name: {n: c["state_dict"][n] for n in names} for name, c in ckpts.items()}  # parameters only
    data = prepared_data(prepared, runtime)
    batches, G = measurement_batches(data, cfg, runtime), cfg.grid_points
    log.info(f"plane through {', '.join(points)}: {G} × {G} grid on {data.info.name}, test over {batches.test.n}")
    t0 = time.perf_counter()
    with progress("plane_points", G * G + 4) as advance:
        grid = dict(grid_points=G, margin=cfg.margin, wd=train.wd, progress=advance)
        r = measure_points_plane(points, template, batches, runtime, **grid)
    seconds, g = time.perf_counter() - t0, r.as_dict()
    with atomic_dir(out) as tmp:
        atomic_torch_save(g, tmp / "grid.pt")
    summary = r.summary()
    run = dict(grid_points=G, margin=cfg.margin, **r.extent(), points=list(cfg.points), names=list(points), wd=train.wd)
    run.update(dataset=data.info.name, model=spec["name"], bn_samples=batches.bn.n if has_bn(template) else 0)
    run.update(train_samples=batches.train.n, test_samples=batches.test.n, **runtime.as_dict(), seconds=seconds)
    write_metrics(metrics, summary, {**run, "seconds_per_point": seconds / (G * G + 4)})
    plane_figures(g, train_png, error_png, f"{', '.join(points)}, {spec['name']} on {data.info.name}")
    err, gr = {n: f"{x['test_error']:.4f}" for n, x in summary["points"].items()}, summary["grid"]["test_error"]
    console.print(
        f"plane {G}×{G}: test error {gr['min']:.4f}–{gr['max']:.4f}; at {', '.join(f'{n} {err[n]}' for n in points)}, "
        f"their centroid {err['centroid']} ({seconds:.0f} s) → {out / 'grid.pt'}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
