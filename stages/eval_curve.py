"""Stage eval_curve: loss and error along the fitted curve and along the straight segment.

Each path is measured at ``eval.num_points`` equally spaced t (:func:`modeconn.path.measure_path`: BatchNorm
recalibrated at each point) and the curve is put against its segment (:func:`modeconn.path.curve_metrics`:
summaries, lengths, barriers, the ensembles of Sec. 4). With ``eval.align`` (the default), a third path: the
aligned segment ŵ1 → π(ŵ2) (:func:`modeconn.path.aligned_segment`), in ``aligned.pt`` with the permutations.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from modeconn.bn import has_bn
from modeconn.curves import load_curve, segment_of
from modeconn.errors import ModeconnError
from modeconn.io import atomic_dir, atomic_torch_save
from modeconn.models import from_spec
from modeconn.path import aligned_segment, along_t_table, curve_metrics, measure_paths, path_table
from modeconn.plots import along_t
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import read_sections
from .kit.inputs import measurement_batches, prepared_data
from .kit.layout import CURVE_HINT
from .kit.records import write_csv, write_metrics


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve_dir: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    out: Path = typer.Option(Path("data/curve_eval"), "--out", help="Output folder (test log-probabilities per t)."),
    metrics: Path = typer.Option(Path("metrics/curve.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/curve_eval.csv"), "--table", help="One row per path and t."),
    wide: Path = typer.Option(Path("metrics/curve_along_t.csv"), "--wide", help="One row per t, paths side by side."),
    figure: Path = typer.Option(Path("metrics/curve_along_t.png"), "--figure", help="PNG of loss and error along t."),
    runtime: Runtime = CPU,
) -> None:
    """Measure train/test loss and error along the curve and the segment (params: eval)."""
    (cfg,) = read_sections(params, "eval")
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
    paths = {"curve": runtime.prepare(curve), "segment": runtime.prepare(segment_of(curve, from_spec(blob["spec"])))}
    data = prepared_data(prepared, runtime)
    batches, alignment = measurement_batches(data, cfg, runtime), None
    if cfg.align:
        try:
            aligned, perms, alignment = aligned_segment(
                curve, lambda: from_spec(blob["spec"]), data.test.x[:2].float().cpu(), cfg.seed
            )
        except ModeconnError as e:  # the library says what it cannot align; the way out is the pipeline's
            raise ModeconnError(f"{e}; set eval.align: false in {params} to skip the aligned segment") from e
        paths["aligned"], a = runtime.prepare(aligned), alignment
        moved = (
            f"{a['moved_fraction']:.0%} of {a['hidden_units']} hidden units moved ({a['permutation_groups']} groups)"
        )
        log.info(f"alignment: {moved}; ‖ŵ2 − ŵ1‖ {a['distance_before']:.2f} → ‖π(ŵ2) − ŵ1‖ {a['distance_after']:.2f}")
    ts = torch.linspace(0, 1, cfg.num_points).tolist()
    images = f"on {data.info.name} (BN over {batches.bn.n}, train loss over {batches.train.n} images)"
    log.info(f"evaluating the {blob['kind']} and the segment at {cfg.num_points} points of t {images}")
    with progress("eval_curve", len(paths) * cfg.num_points) as advance:
        results = measure_paths(paths, ts, batches, runtime, wd=float(blob.get("wd", 0.0)), progress=advance)
    test_y = data.test.y.cpu()
    with atomic_dir(out) as tmp:
        for name, r in results.items():
            aligned = {"perms": perms} if name == "aligned" else {}  # group -> (n,): unit i of π(ŵ2) is perms[g][i]
            atomic_torch_save({**r.predictions(), **aligned, "labels": test_y}, tmp / f"{name}.pt")
    s = curve_metrics(results, cfg.ensemble, alignment)
    run = dict(dataset=data.info.name, model=blob["spec"]["name"], type=blob["kind"], num_bends=blob["num_bends"])
    run.update(endpoints=blob.get("endpoints"), num_points=cfg.num_points, ensemble=cfg.ensemble)
    run.update(bn_samples=batches.bn.n if has_bn(curve.template) else 0, train_samples=batches.train.n)
    run.update(test_samples=int(test_y.numel()), align=cfg.align, **runtime.as_dict())
    rows = path_table(results).to_dict("records")
    write_csv(table, rows)
    write_csv(wide, along_t_table(results).to_dict("records"))
    write_metrics(metrics, s, {**run, "seconds": time.perf_counter() - t0})
    title = f"{blob['kind']} ({blob['num_bends']} bends) vs segment, {run['model']} on {run['dataset']}"
    along_t(rows, figure, title=title)
    e, b, c, sg = s["ensemble"], s["barrier"], s["curve"]["test_error"], s["segment"]["test_error"]
    console.print(
        f"max test error: curve {c['max']:.4f}, segment {sg['max']:.4f} (ends {c['start']:.4f}, {c['end']:.4f}); "
        f"length ratio {s['length']['ratio']:.2f}; ensemble accuracy curve {e['curve']['accuracy']:.4f} vs "
        f"endpoints {e['endpoints']['accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)\ntrain loss barrier: "
        + ", ".join(f"{name} {b[name]['train_loss']:.4f}" for name in b)
        + (f"; alignment moved {s['alignment']['moved_fraction']:.0%} of hidden units" if "alignment" in s else "")
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
