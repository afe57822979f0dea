"""Stage barriers: the barrier card of every path between every pair of networks (modeconn.barriers).

Every pair of train.seeds' endpoints (or of ``barriers.files``): the segment, the aligned segment and the aligned
segment with REPAIR at ``barriers.num_points`` values of t (:func:`modeconn.barriers.measure_pairs`); with ``--curve``
and ``--curve-table``, the fitted curve of its pair (:func:`modeconn.barriers.curve_of_pair`). Each path's card per
pair and mean ± std over pairs (:func:`modeconn.barriers.path_cards`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
import typer

from modeconn import barriers as bar
from modeconn import report
from modeconn.bn import has_bn
from modeconn.curves import load_curve
from modeconn.errors import CheckpointError, ConfigError
from modeconn.io import atomic_write_text, same_architecture
from modeconn.models import from_spec
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import BarriersConfig, read_sections
from .kit.inputs import endpoint_checkpoint, measurement_batches, prepared_data, user_checkpoints
from .kit.layout import CURVE_HINT, ENDPOINT_HINT, ENDPOINTS, endpoint_model
from .kit.records import write_csv, write_json, write_metrics


def load_networks(cfg: BarriersConfig, seeds, endpoints: Path, params: Path, prepared: Path) -> tuple[dict, dict]:
    """(spec, name → checkpoint): ``barriers.files``, or the endpoints of ``train.seeds`` (named by their seed)."""
    if cfg.files:
        found = user_checkpoints(list(map(Path, cfg.files)), params, prepared, "barriers.files", new_head=False)
        ckpts = dict(zip(cfg.files, found))
    elif len(seeds) < 2:
        raise ConfigError(f"barriers: train.seeds lists one seed ({seeds[0]}): a barrier joins two networks")
    else:
        paths = {s: endpoint_model(endpoints, s) for s in seeds}
        for s, path in paths.items():
            if not path.is_file():
                raise CheckpointError(f"barriers: no endpoint of seed {s} ({path} not found). {ENDPOINT_HINT}")
        ckpts = {s: endpoint_checkpoint(path) for s, path in paths.items()}
    return same_architecture(list(ckpts.values()), [f"network {n}" for n in ckpts], "a path joins one model"), ckpts


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    endpoints: Path = typer.Option(ENDPOINTS, "--endpoints", help="Folder of the endpoints (train_endpoint)."),
    curve_dir: Path = typer.Option(None, "--curve", help="fit_curve's folder: the curve's card (with --curve-table)."),
    curve_table: Path = typer.Option(None, "--curve-table", help="eval_curve's rows per path and t (curve_eval.csv)."),
    metrics: Path = typer.Option(Path("metrics/barriers.json"), "--metrics", help="The cards as JSON."),
    table: Path = typer.Option(Path("metrics/barriers.csv"), "--table", help="The card per pair, mean and std."),
    along: Path = typer.Option(Path("metrics/barriers_along_t.csv"), "--along", help="Every path's rows per t."),
    wide: Path = typer.Option(Path("metrics/barriers_mean_along_t.csv"), "--wide", help="Mean over pairs per t."),
    markdown: Path = typer.Option(None, "--markdown", help="The card as a Markdown summary (an experiment's)."),
    headline: Path = typer.Option(None, "--headline", help="The headline numbers (a pipeline without a report)."),
    runtime: Runtime = CPU,
) -> None:
    """Measure the barrier card of every path between every pair of networks (params: barriers, train)."""
    cfg, train = read_sections(params, "barriers", "train")
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    spec, ckpts = load_networks(cfg, list(train.seeds), endpoints, params, prepared)
    template = from_spec(spec)
    weights, buffers = bar.split_states(template, {k: c["state_dict"] for k, c in ckpts.items()})
    data = prepared_data(prepared, runtime)
    batches, ts = measurement_batches(data, cfg, runtime), torch.linspace(0, 1, cfg.num_points).tolist()
    example = data.test.x[:2].float().cpu() if cfg.align else None
    points = bar.pairs_points(len(ckpts), cfg.num_points, bn=has_bn(template), align=cfg.align, repair=cfg.repair)
    log.info(f"barriers of {', '.join(map(bar.pair_label, bar.pairs_of(list(ckpts))))} on {data.info.name}")
    with progress("barriers", points) as advance:
        measured, alignment = bar.measure_pairs(
            lambda: from_spec(spec), weights, ts, batches, runtime,
            buffers=buffers, example=example, seed=cfg.seed, repair=cfg.repair, wd=train.wd, progress=advance,
        )  # fmt: skip
    if curve_dir is not None and curve_table is not None:
        curve, blob = load_curve(curve_dir / "curve.pt", from_spec, hint=CURVE_HINT)
        pair, on = tuple(blob.get("endpoints") or ()), dict(buffers=buffers, wd=blob.get("wd", 0.0))
        with_curve = bar.curve_of_pair(measured, pair, curve, pd.read_csv(curve_table), batches, runtime, **on)
        if with_curve is None:
            log.warning(f"the curve joins {pair}, not a pair of {list(ckpts)}: it has no card here")
        measured = with_curve or measured
    cards = bar.path_cards(measured, cfg.threshold)
    summary = bar.card_record(cards, cfg.threshold, alignment)
    run = dict(dataset=data.info.name, model=spec["name"], num_points=cfg.num_points, bn_samples=batches.bn.n)
    run.update(train_samples=batches.train.n, test_samples=batches.test.n, **runtime.as_dict())
    long = bar.along_t_rows(measured)
    for path, frame in ((table, cards), (along, long), (wide, bar.along_t_mean(long))):
        write_csv(path, frame.to_dict("records"))  # NaN and <NA> as empty cells
    run["seconds"] = time.perf_counter() - t0
    write_metrics(metrics, summary, run)
    if markdown is not None:
        atomic_write_text(markdown, "\n".join(report.barrier_card_lines(summary, level=2)) + "\n")
    head = report.barriers_headline(summary)
    if headline is not None:
        write_json(headline, head)
    said = ", ".join(f"{k.removesuffix('_test_error')} {v:.4f}" for k, v in head["barriers"].items() if v is not None)
    console.print(
        f"mean test error barrier (Frankle): {said} over {len(measured)} pairs ({run['seconds']:.0f} s) → {table}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
