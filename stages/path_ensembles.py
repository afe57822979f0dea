"""Stage path_ensembles: ensembles of an endpoint and one point of a path (paper, Fig. 4).

For each t of eval_curve's grid, the test error of the ensemble {ŵ1, w(t)} with w(t) on the curve, on the
segment, or on a random ray from ŵ1 at the curve point's distance (:func:`modeconn.path_ensembles.path_ensembles`;
the direction drawn from ``path_ensembles.seed``). Curve and segment points reuse the predictions eval_curve
stored; only the random points are evaluated.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn.curves import load_curve
from modeconn.errors import CheckpointError
from modeconn.models import from_spec
from modeconn.path_ensembles import path_ensembles
from modeconn.plots import path_ensembles as plot_path_ensembles
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import read_sections
from .kit.inputs import measurement_batches, path_predictions, prepared_data
from .kit.layout import CURVE_HINT
from .kit.records import write_csv, write_metrics


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve_dir: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    curve_eval: Path = typer.Option(Path("data/curve_eval"), "--curve-eval", help="Folder written by eval_curve."),
    metrics: Path = typer.Option(Path("metrics/path_ensembles.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/path_ensembles.csv"), "--table", help="One row per t (DVC plot)."),
    figure: Path = typer.Option(Path("metrics/path_ensembles.png"), "--figure", help="PNG of the errors along t."),
    runtime: Runtime = CPU,
) -> None:
    """Ensembles of an endpoint with a point of the curve, segment or a random ray (params: path_ensembles)."""
    (cfg,) = read_sections(params, "path_ensembles")
    seed_everything(cfg.seed)
    ts, stored, labels, stored_val = path_predictions(curve_eval)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    template = runtime.prepare(from_spec(blob["spec"]))
    data = prepared_data(prepared, runtime)
    val_y = data.val.y.cpu() if data.val is not None and len(stored_val) == 2 else None
    val_ok = val_y is None or all(lp.shape[1] == val_y.numel() for lp in stored_val.values())
    if not (torch.equal(data.test.y.cpu(), labels) and val_ok):
        raise CheckpointError(
            f"{curve_eval} holds predictions on another test or validation set than {prepared}: "
            "rerun `dvc repro eval_curve`"
        )
    batches = measurement_batches(data, cfg, runtime)
    log.info(f"ensembles of ŵ1 with points of the curve, segment and a random ray at {len(ts)} t on {data.info.name}")
    t0 = time.perf_counter()
    how = dict(seed=cfg.seed, method=cfg.ensemble, val_predictions=stored_val, val_labels=val_y)
    with progress("path_ensembles", len(ts)) as advance:
        r = path_ensembles(curve, template, ts, stored, labels, batches, runtime, **how, progress=advance)
    rows, summary = r.rows.to_dict("records"), r.summary
    s = dict(ensemble=cfg.ensemble, direction_seed=cfg.seed, dataset=data.info.name, model=blob["spec"]["name"])
    s.update(type=blob["kind"], num_bends=blob["num_bends"], endpoints=blob.get("endpoints"), num_points=len(rows))
    s.update(test_samples=int(labels.numel()), **runtime.as_dict(), seconds=time.perf_counter() - t0)
    write_csv(table, rows)
    write_metrics(metrics, summary, s)
    title = f"Ensemble of ŵ1 and a point at t: {s['type']}, {s['model']} on {s['dataset']}"
    plot_path_ensembles(rows, figure, summary["endpoint_error"], title=title)
    half = list(summary["by_t"].values())[-1]
    console.print(
        f"ensemble error of ŵ1 with the point at t≈{half['t']:.2f}: curve {half['curve_error']:.4f}, "
        f"segment {half['segment_error']:.4f}, random {half['random_error']:.4f} (ŵ1 alone "
        f"{summary['endpoint_error']:.4f}; {s['seconds']:.0f} s) → {table}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
