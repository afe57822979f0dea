"""Stage eval_curve: loss and error along the fitted curve and along the straight segment.

At each of ``eval.num_points`` equally spaced t, for the curve and for the
segment between the same endpoints: recalibrate BatchNorm at φ(t), then
measure train loss (with and without the 0.5·wd·‖φ(t)‖² term), train error,
test NLL and test error (paper, Sec. 3). Summaries per path (ends, min, max,
mean over t, integral over arc length), the lengths, and the curve ensembles
of Sec. 4 (all grid points, with and without per-point temperature scaling).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn import ensemble
from modeconn.bn import has_bn
from modeconn.curves import load_curve, segment_of
from modeconn.data import eval_batches
from modeconn.io import atomic_dir, atomic_torch_save
from modeconn.metrics import length_ratio, path_summaries
from modeconn.models import from_spec
from modeconn.paths import MEASURES, measure
from modeconn.plots import along_t
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.weights import flat

from .common import (
    ParamsOpt,
    PreparedOpt,
    console,
    log,
    prepared_data,
    progress,
    stage_app,
    write_csv,
    write_metrics,
)
from .config import EvalConfig, read_sections

CURVE_HINT = "Run `dvc repro fit_curve` to create it."


def evaluate(
    cfg: EvalConfig, prepared: Path, curve_dir: Path, out: Path, runtime: Runtime
) -> tuple[list[dict], dict, dict]:
    """The rows (one per path and t), the summary metrics and the run information."""
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    wd = float(blob.get("wd", 0.0))
    segment = segment_of(curve, from_spec(blob["spec"]))
    curve, segment = runtime.prepare(curve), runtime.prepare(segment)
    data = prepared_data(prepared, runtime)
    batches = eval_batches(
        data,
        cfg.batch_size,
        bn_samples=cfg.bn_samples,
        train_samples=cfg.train_samples,
        seed=cfg.seed,
        channels_last=runtime.channels_last,
    )
    ts = torch.linspace(0, 1, cfg.num_points).tolist()
    test_y, val_y = data.test.y.cpu(), data.val.y.cpu() if data.val is not None else None
    rows, stored, lengths = [], {}, {}
    log.info(
        "evaluating the %s and the segment at %d points of t on %s (BN over %d, train loss over %d images)",
        blob["kind"],
        cfg.num_points,
        data.info.name,
        batches.bn.n,
        batches.train.n,
    )
    with progress("eval_curve", 2 * cfg.num_points) as advance:
        for name, path in (("curve", curve), ("segment", segment)):
            test_lp, val_lp, arc, prev = [], [], [0.0], None
            for t in ts:
                with torch.no_grad():
                    weights = {k: v.detach() for k, v in path.weights(t).items()}
                point = flat(weights)
                if prev is not None:
                    arc.append(arc[-1] + (point - prev).norm().item())
                prev = point
                r = measure(path.template, weights, batches, runtime)
                row = {"path": name, "t": t, **r.row(wd)}
                if r.val_logprobs is not None:
                    temp = ensemble.fit_temperature(r.val_logprobs, val_y)
                    row["temperature"] = temp
                    row["test_nll_scaled"] = ensemble.nll(ensemble.scale(r.test_logprobs, temp), test_y)
                    val_lp.append(r.val_logprobs)
                rows.append(row)
                test_lp.append(r.test_logprobs)
                advance(f"{name} t={t:.2f} test err {r.test_error:.4f}")
            lengths[name] = arc[-1]
            stored[name] = {
                "t": torch.tensor(ts),
                "logprobs": torch.stack(test_lp),  # (P, N, K)
                "val_logprobs": torch.stack(val_lp) if val_lp else None,
                "arc": torch.tensor(arc),
            }
    with atomic_dir(out) as tmp:
        for name, blob_ in stored.items():
            atomic_torch_save({**blob_, "labels": test_y}, tmp / f"{name}.pt")
    summary = {
        name: path_summaries([r for r in rows if r["path"] == name], stored[name]["arc"].tolist(), MEASURES)
        for name in stored
    }
    summary["length"] = length_ratio(lengths["curve"], lengths["segment"])
    temps = [r["temperature"] for r in rows if r["path"] == "curve"] if val_y is not None else None
    summary["ensemble"] = ensemble.curve_ensembles(
        list(stored["curve"]["logprobs"]), list(stored["segment"]["logprobs"]), test_y, cfg.ensemble, temps
    )
    run = {
        "dataset": data.info.name,
        "model": blob["spec"]["name"],
        "type": blob["kind"],
        "num_bends": blob["num_bends"],
        "endpoints": blob.get("endpoints"),
        "num_points": cfg.num_points,
        "ensemble": cfg.ensemble,
        "bn_samples": batches.bn.n if has_bn(curve.template) else 0,
        "train_samples": batches.train.n,
        "test_samples": int(test_y.numel()),
        **runtime.as_dict(),
    }
    return rows, summary, run


def wide_rows(rows: list[dict]) -> list[dict]:
    """The long table as one row per t with ``<path>_<measure>`` columns (curve vs segment on one chart)."""
    by_t: dict[float, dict] = {}
    for r in rows:
        out = by_t.setdefault(r["t"], {"t": r["t"]})
        for m in MEASURES:
            out[f"{r['path']}_{m}"] = r[m]
    return list(by_t.values())


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    out: Path = typer.Option(Path("data/curve_eval"), "--out", help="Output folder (test log-probabilities per t)."),
    metrics: Path = typer.Option(Path("metrics/curve.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/curve_eval.csv"), "--table", help="One row per path and t."),
    wide: Path = typer.Option(
        Path("metrics/curve_along_t.csv"), "--wide", help="One row per t, curve and segment side by side (DVC plots)."
    ),
    figure: Path = typer.Option(Path("metrics/curve_along_t.png"), "--figure", help="PNG of loss and error along t."),
    runtime: Runtime = CPU,
) -> None:
    """Measure train/test loss and error along the curve and the segment (params: eval)."""
    (cfg,) = read_sections(params, "eval")
    t0 = time.perf_counter()
    rows, s, run = evaluate(cfg, prepared, curve, out, runtime)
    write_csv(table, rows)
    write_csv(wide, wide_rows(rows))
    write_metrics(metrics, s, {**run, "seconds": time.perf_counter() - t0})
    along_t(
        rows,
        figure,
        title=f"{run['type']} ({run['num_bends']} bends) vs segment, {run['model']} on {run['dataset']}",
    )
    e = s["ensemble"]
    console.print(
        f"max test error: curve {s['curve']['test_error']['max']:.4f}, segment "
        f"{s['segment']['test_error']['max']:.4f} (ends {s['curve']['test_error']['start']:.4f}, "
        f"{s['curve']['test_error']['end']:.4f}); length ratio {s['length']['ratio']:.2f}; "
        f"ensemble accuracy curve {e['curve']['accuracy']:.4f} vs endpoints {e['endpoints']['accuracy']:.4f} "
        f"({time.perf_counter() - t0:.0f} s)"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
