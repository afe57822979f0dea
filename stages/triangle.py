"""Stage triangle: the simplex of independently trained endpoints, the contrast to a trained simplex.

The final networks of the endpoint seeds ``simplex.triangle`` (by default 0, 1, 2: a triangle) are the vertices of
a simplex with no free vertex; each vertex and ``simplex.samples`` points drawn uniformly from it are measured as
the ``simplex`` stage measures its own (:func:`modeconn.simplex.measure_simplex`, BatchNorm recalibrated at each
point). Between independent modes the interior's error is high (the paper's Fig. 1 left; Benton et al. 2021),
where a trained simplex's stays near its vertices'.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn.data import eval_batches
from modeconn.io import same_architecture
from modeconn.models import from_spec
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.simplex import Simplex, measure_simplex

from .kit.cli import ParamsOpt, PreparedOpt, console, progress, stage_app
from .kit.config import read_sections
from .kit.inputs import endpoint_checkpoint, prepared_data
from .kit.layout import ENDPOINTS, endpoint_model
from .kit.records import write_csv, write_metrics


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of the endpoints (train_endpoint)."),
    metrics: Path = typer.Option(Path("metrics/triangle.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/triangle.csv"), "--table", help="One row per measured point."),
    runtime: Runtime = CPU,
) -> None:
    """Measure the simplex of the endpoints simplex.triangle at its vertices and sampled interior points (params:
    simplex)."""
    (cfg,) = read_sections(params, "simplex")
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    ckpts = [endpoint_checkpoint(endpoint_model(endpoints, s)) for s in cfg.triangle]
    names = [f"simplex.triangle: seed {s}" for s in cfg.triangle]
    spec = same_architecture(ckpts, names, "its vertices must be networks of one model")
    template = from_spec(spec)
    names = [n for n, _ in template.named_parameters()]
    simplex = runtime.prepare(Simplex(template, [{n: c["state_dict"][n] for n in names} for c in ckpts], free=0))
    data = prepared_data(prepared, runtime)
    sizes = dict(bn_samples=cfg.bn_samples, train_samples=cfg.train_samples, seed=cfg.seed)
    measuring = eval_batches(data, cfg.eval_batch_size, **sizes, channels_last=runtime.channels_last)
    points = torch.Generator().manual_seed(cfg.seed)
    with progress("triangle points", simplex.num_vertices + cfg.samples) as advance:
        m = measure_simplex(simplex, cfg.samples, points, measuring, runtime, advance)
    summary = m.summary(cfg.wd)
    run = dict(seeds=list(cfg.triangle), samples=cfg.samples, wd=cfg.wd, dataset=data.info.name, model=spec["name"])
    write_csv(table, m.rows(cfg.wd))
    write_metrics(metrics, summary, {**run, **runtime.as_dict(), "seconds": time.perf_counter() - t0})
    v, i = summary["vertex_mean"], summary["interior"]["test_error"]
    console.print(
        f"simplex of seeds {list(cfg.triangle)}: volume {summary['volume']:.3g}; test error at the vertices "
        f"{v['test_error']:.4f} (mean), at {cfg.samples} interior points {i['mean']:.4f} ± {i['std']:.4f} "
        f"({time.perf_counter() - t0:.0f} s) → {metrics}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
