"""Stage eval_curve: loss and error along the fitted curve and along the straight segment.

At each of ``eval.num_points`` equally spaced t, for the curve and for the
segment between the same endpoints: recalibrate BatchNorm at φ(t), then
measure train loss (with and without the 0.5·wd·‖φ(t)‖² term), train error,
test NLL and test error (paper, Sec. 3). Summaries per path (ends, min, max,
mean over t, integral over arc length), the lengths, and the curve ensembles
of Sec. 4 (all grid points, with and without per-point temperature scaling).

With ``eval.align`` (the default), a third path on the same t grid: the aligned segment
(1 − t) ŵ1 + t π(ŵ2), ŵ2's hidden units permuted into line with ŵ1 by weight matching (Ainsworth et al.
2023; modeconn.align), in ``aligned.pt`` (with the permutations) and in the tables as path ``aligned``.
Each path's barrier, max_t [f(t) − ((1 − t) f(0) + t f(1))], goes to ``barrier`` for every measure.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn import calibration, ensemble
from modeconn.align import align_endpoints
from modeconn.bn import has_bn
from modeconn.curves import Curve, load_curve, segment_of
from modeconn.errors import ModeconnError
from modeconn.io import atomic_dir, atomic_torch_save
from modeconn.metrics import length_ratio, loss_barrier, path_summaries
from modeconn.models import from_spec
from modeconn.paths import MEASURES, VAL_MEASURES, measure
from modeconn.plots import along_t
from modeconn.runtime import CPU, Runtime, seed_everything
from modeconn.weights import flat

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import EvalConfig, read_sections
from .kit.inputs import measurement_batches, prepared_data
from .kit.layout import CURVE_HINT, PARAMS
from .kit.records import write_csv, write_metrics


def evaluate(
    cfg: EvalConfig, prepared: Path, curve_dir: Path, out: Path, runtime: Runtime, params: Path = PARAMS
) -> tuple[list[dict], dict, dict]:
    """The rows (one per path and t), the summary metrics and the run information (``params``: the file
    ``cfg`` came from, named in the way out of an alignment the model does not allow)."""
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    wd = float(blob.get("wd", 0.0))
    segment = segment_of(curve, from_spec(blob["spec"]))
    curve, segment = runtime.prepare(curve), runtime.prepare(segment)
    data = prepared_data(prepared, runtime)
    batches = measurement_batches(data, cfg, runtime)
    paths, alignment = {"curve": curve, "segment": segment}, None
    if cfg.align:  # the segment to ŵ2 with its hidden units permuted into line with ŵ1 (Ainsworth et al. 2023)
        w1, w2 = curve.endpoint(0), curve.endpoint(-1)
        try:
            w2_aligned, perms, alignment = align_endpoints(
                from_spec(blob["spec"]), w1, w2, data.test.x[:2].float().cpu(), seed=cfg.seed
            )
        except ModeconnError as e:  # the library says what it cannot align; the way out is the pipeline's
            raise ModeconnError(f"{e}; set eval.align: false in {params} to skip the aligned segment") from e
        paths["aligned"] = runtime.prepare(Curve(from_spec(blob["spec"]), w1, w2_aligned, "bezier", 2))
        log.info(
            "alignment: %.0f%% of %d hidden units moved (%d permutation groups); ‖ŵ2 − ŵ1‖ %.2f → ‖π(ŵ2) − ŵ1‖ %.2f",
            100 * alignment["moved_fraction"],
            alignment["hidden_units"],
            alignment["permutation_groups"],
            alignment["distance_before"],
            alignment["distance_after"],
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
    with progress("eval_curve", len(paths) * cfg.num_points) as advance:
        for name, path in paths.items():
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
                row["test_ece"] = calibration.ece(r.test_logprobs, test_y)  # 15 bins (Guo et al. 2017)
                if r.val_logprobs is not None:
                    row["val_nll"] = ensemble.nll(r.val_logprobs, val_y)
                    row["val_error"] = ensemble.error(r.val_logprobs, val_y)
                    temp = ensemble.fit_temperature(r.val_logprobs, val_y)
                    row["temperature"] = temp
                    row["test_nll_scaled"] = ensemble.nll(ensemble.scale(r.test_logprobs, temp), test_y)
                    row["test_ece_scaled"] = calibration.ece(ensemble.scale(r.test_logprobs, temp), test_y)
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
    if alignment is not None:
        stored["aligned"]["perms"] = perms  # group -> (n,): unit i of π(ŵ2) is unit perms[g][i] of ŵ2
    with atomic_dir(out) as tmp:
        for name, blob_ in stored.items():
            atomic_torch_save({**blob_, "labels": test_y}, tmp / f"{name}.pt")
    measures = MEASURES + (VAL_MEASURES if val_y is not None else ())
    summary = {
        name: path_summaries([r for r in rows if r["path"] == name], stored[name]["arc"].tolist(), measures)
        for name in stored
    }
    for name in stored:  # the calibration of the points along each path, before and after temperature scaling
        path_rows = [r for r in rows if r["path"] == name]
        ece_keys = [k for k in ("test_ece", "test_ece_scaled") if all(k in r for r in path_rows)]
        summary[name].update(path_summaries(path_rows, stored[name]["arc"].tolist(), ece_keys))
    summary["length"] = length_ratio(lengths["curve"], lengths["segment"])
    summary["barrier"] = {  # max_t [f(t) − ((1 − t) f(0) + t f(1))] per path and measure
        name: {m: loss_barrier(ts, [r[m] for r in rows if r["path"] == name]) for m in MEASURES} for name in stored
    }
    if alignment is not None:
        summary["alignment"] = {**alignment, "aligned_length": lengths["aligned"]}
    temps = [r["temperature"] for r in rows if r["path"] == "curve"] if val_y is not None else None
    summary["ensemble"] = ensemble.curve_ensembles(
        list(stored["curve"]["logprobs"]), list(stored["segment"]["logprobs"]), test_y, cfg.ensemble, temps
    )
    if val_y is not None:  # the same ensembles on the validation split (where the temperatures were fitted)
        summary["ensemble_val"] = ensemble.curve_ensembles(
            list(stored["curve"]["val_logprobs"]), list(stored["segment"]["val_logprobs"]), val_y, cfg.ensemble
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
        "align": cfg.align,
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
    rows, s, run = evaluate(cfg, prepared, curve, out, runtime, params)
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
    b = s["barrier"]
    console.print(
        "train loss barrier: "
        + ", ".join(f"{name} {b[name]['train_loss']:.4f}" for name in b)
        + (f"; alignment moved {s['alignment']['moved_fraction']:.0%} of hidden units" if "alignment" in s else "")
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
