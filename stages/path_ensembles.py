"""Stage path_ensembles: ensembles of an endpoint and one point of a path (paper, Fig. 4).

For each t of eval_curve's grid, the test error of the two-network ensemble
{ŵ1, w(t)} where w(t) is the point at t on the curve, on the segment to ŵ2,
or on a random ray from ŵ1 at the same distance as the curve point,
‖w(t) − ŵ1‖ = ‖φ(t) − ŵ1‖ (one random unit direction, drawn once from
``path_ensembles.seed``). Curve and segment points reuse the test predictions
eval_curve stored; only the random points are evaluated (BN recalibration,
then the test set). On the curve the ensemble improves already at small t:
nearby points of the curve are different functions; on a random ray of the
same length they are not, or they are much worse networks.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn import ensemble
from modeconn.curves import load_curve
from modeconn.errors import CheckpointError
from modeconn.io import load_file
from modeconn.models import from_spec
from modeconn.paths import at_point, nearest_t, random_direction
from modeconn.plots import path_ensembles as plot_path_ensembles
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.train import predict
from modeconn.weights import flat, unflatten

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import PathEnsemblesConfig, read_sections
from .kit.inputs import measurement_batches, prepared_data
from .kit.layout import CURVE_HINT
from .kit.records import write_csv, write_metrics

PATHS = ("curve", "segment", "random")
SUMMARY_T = (0.1, 0.2, 0.3, 0.4, 0.5)


def load_path_predictions(curve_eval: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict]:
    """eval_curve's t grid [P], test log-probs per path [P, N, K], the test labels [N], and the validation
    log-probs per path [P, N_val, K] (empty where the run has no validation split)."""
    hint = "Run `dvc repro eval_curve` to create it."
    blobs = {name: load_file(curve_eval / f"{name}.pt", f"{name} evaluation", hint) for name in ("curve", "segment")}
    for name, blob in blobs.items():
        if not isinstance(blob, dict) or not {"t", "logprobs", "labels"} <= set(blob):
            raise CheckpointError(f"{curve_eval / f'{name}.pt'} lacks t/logprobs/labels: rerun `dvc repro eval_curve`")
    c, s = blobs["curve"], blobs["segment"]
    if not (torch.equal(c["t"], s["t"]) and torch.equal(c["labels"], s["labels"])):
        raise CheckpointError(
            f"{curve_eval}: curve.pt and segment.pt are of different t grids or test sets: rerun `dvc repro eval_curve`"
        )
    val = {name: b["val_logprobs"] for name, b in blobs.items() if b.get("val_logprobs") is not None}
    return c["t"].double(), {"curve": c["logprobs"], "segment": s["logprobs"]}, c["labels"], val


def run(
    cfg: PathEnsemblesConfig,
    prepared: Path,
    curve_dir: Path,
    curve_eval: Path,
    runtime: Runtime,
) -> tuple[list[dict], dict, dict]:
    """The rows (one per t), the summary metrics and the run information."""
    seed_everything(cfg.seed)
    ts, stored, labels, stored_val = load_path_predictions(curve_eval)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    points = curve.control_points()
    like = {k: v[0] for k, v in points.items()}
    w1 = flat(like).double()  # (D,)
    direction = random_direction(w1.numel(), cfg.seed)  # (D,)
    template = runtime.prepare(from_spec(blob["spec"]))
    like = {k: v.to(runtime.device) for k, v in like.items()}
    data = prepared_data(prepared, runtime)
    if not torch.equal(data.test.y.cpu(), labels):
        raise CheckpointError(
            f"{curve_eval} holds predictions on another test set than {prepared}: rerun `dvc repro eval_curve`"
        )
    batches = measurement_batches(data, cfg, runtime)
    start = stored["curve"][0]  # ŵ1's test log-probs (BN recalibrated by eval_curve)
    val_y = data.val.y.cpu() if data.val is not None and len(stored_val) == 2 else None
    start_val = stored_val["curve"][0] if val_y is not None else None
    rows = []
    t0 = time.perf_counter()
    log.info(
        "ensembles of ŵ1 with points of the curve, the segment and a random ray at %d t on %s", len(ts), data.info.name
    )
    with progress("path_ensembles", len(ts)) as advance:
        for p, t in enumerate(ts.tolist()):
            with torch.no_grad():
                distance = (flat(curve.weights(t)).double() - w1).norm().item()
            if distance == 0:
                random_lp, random_val = start, start_val  # the random point is ŵ1 itself
            else:
                forward = at_point(template, unflatten(w1 + distance * direction, like), batches.bn, runtime)
                random_lp, _ = predict(forward, batches.test, runtime)  # (N, K)
                random_val = predict(forward, batches.val, runtime)[0] if val_y is not None else None
            members = {"curve": stored["curve"][p], "segment": stored["segment"][p], "random": random_lp}
            row = {"t": t, "distance": distance}
            for name, lp in members.items():
                row[f"{name}_error"] = ensemble.error(ensemble.combine([start, lp], cfg.ensemble), labels)
            for name, lp in members.items():
                row[f"{name}_point_error"] = ensemble.error(lp, labels)
            if val_y is not None:  # the same ensembles on the validation split
                val_members = {
                    "curve": stored_val["curve"][p],
                    "segment": stored_val["segment"][p],
                    "random": random_val,
                }
                for name, lp in val_members.items():
                    row[f"{name}_val_error"] = ensemble.error(ensemble.combine([start_val, lp], cfg.ensemble), val_y)
            rows.append(row)
            advance(
                f"t={t:.2f} ensemble error curve {row['curve_error']:.4f} segment {row['segment_error']:.4f} "
                f"random {row['random_error']:.4f}"
            )
    seconds = time.perf_counter() - t0
    summary = {
        "endpoint_error": rows[0]["curve_point_error"],
        "other_endpoint_error": rows[-1]["curve_point_error"],
        "endpoints_ensemble_error": rows[-1]["curve_error"],
        "by_t": nearest_t(rows, SUMMARY_T, [f"{name}_error" for name in PATHS]),
        "best": {name: min(r[f"{name}_error"] for r in rows) for name in PATHS},
    }
    if val_y is not None:
        summary["best_val"] = {name: min(r[f"{name}_val_error"] for r in rows) for name in PATHS}
    info = {
        "ensemble": cfg.ensemble,
        "direction_seed": cfg.seed,
        "dataset": data.info.name,
        "model": blob["spec"]["name"],
        "type": blob["kind"],
        "num_bends": blob["num_bends"],
        "endpoints": blob.get("endpoints"),
        "num_points": len(rows),
        "test_samples": int(labels.numel()),
        **runtime.as_dict(),
        "seconds": seconds,
    }
    return rows, summary, info


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    curve_eval: Path = typer.Option(
        Path("data/curve_eval"), "--curve-eval", help="Folder written by eval_curve (test log-probabilities per t)."
    ),
    metrics: Path = typer.Option(Path("metrics/path_ensembles.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/path_ensembles.csv"), "--table", help="One row per t (DVC plot)."),
    figure: Path = typer.Option(Path("metrics/path_ensembles.png"), "--figure", help="PNG of the errors along t."),
    runtime: Runtime = CPU,
) -> None:
    """Two-network ensembles of an endpoint with a point of the curve, segment or a random ray (params:
    path_ensembles)."""
    (cfg,) = read_sections(params, "path_ensembles")
    rows, summary, s = run(cfg, prepared, curve, curve_eval, runtime)
    write_csv(table, rows)
    write_metrics(metrics, summary, s)
    plot_path_ensembles(
        rows,
        figure,
        summary["endpoint_error"],
        title=f"Ensemble of ŵ1 and a point at t: {s['type']}, {s['model']} on {s['dataset']}",
    )
    half = list(summary["by_t"].values())[-1]
    console.print(
        f"ensemble error of ŵ1 with the point at t≈{half['t']:.2f}: curve {half['curve_error']:.4f}, "
        f"segment {half['segment_error']:.4f}, random {half['random_error']:.4f} (ŵ1 alone "
        f"{summary['endpoint_error']:.4f}; {s['seconds']:.0f} s) → {table}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
