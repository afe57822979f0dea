"""Stages of the width experiment (paper, Sec. 4, Fig. 3): experiments/width/dvc.yaml, over modeconn.width.

K multiplies the model arguments that ``width.scale`` names (the paper's Fig. 3: ``[fc_width]``, the fully
connected layers only); the ordinary stages train two endpoints and a curve per K. Three commands:

- ``subset``: a seeded subset of the prepared training and test splits (``subset`` section), so that four
  widths fit a CPU budget (:func:`modeconn.data.subset_prepared`);
- ``configure --k K``: the params file of width K (the ``model`` section with ``width.args`` scaled by
  K where ``width.scale`` names the key, and the ``train`` section copied) for train_endpoint;
- ``summary``: one row per K from each K's eval_curve metrics (:func:`modeconn.width.summarize`), written
  as width.json (the barrier and length figures), width.csv, width.png and width.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from modeconn.data import read_info, subset_prepared
from modeconn.errors import ConfigError
from modeconn.io import atomic_write_text
from modeconn.plots import width_effect
from modeconn.width import Widths, summarize

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import WidthConfig, read_params, read_sections, section
from .kit.records import read_json, write_csv, write_metrics

KOpt = typer.Option(..., "--k", help="The width factor K (one of width.ks).")
HINT = "Run `dvc repro experiments/width/dvc.yaml`"


def subset(
    params: Path = ParamsOpt,
    prepared: Path = typer.Option(..., "--prepared", help="Folder written by the prepare stage."),
    out: Path = typer.Option(..., "--out", help="The subset, in the prepare stage's format."),
) -> None:
    """Write a seeded subset of the prepared train and test splits (params: subset)."""
    (cfg,) = read_sections(params, "subset")
    hint = "Run `python -m stages.prepare` (or `dvc repro experiments/width/dvc.yaml`) first."
    try:
        meta = subset_prepared(
            prepared, out, train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.seed, hint=hint
        )
    except ConfigError as exc:  # the library names its argument; the user edits subset.<split>_size
        raise ConfigError(f"subset.{exc}") from None
    console.print(f"subset of {prepared}: {meta['n_train']} train, {meta['n_test']} test images → {out}")


def configure(
    k: int = KOpt,
    params: Path = ParamsOpt,
    out: Path = typer.Option(..., "--out", help="The params file of width K (model and train sections)."),
) -> None:
    """Write the params file that train_endpoint reads for width factor K (params: width, train)."""
    raw = read_params(params)
    cfg = section(raw, "width", WidthConfig, params)
    if k not in cfg.ks:
        raise ConfigError(f"--k {k} is not one of width.ks {list(cfg.ks)} in {params}")
    if "train" not in raw:
        raise ConfigError(f"{params} has no 'train' section: the endpoints of each width need it")
    args = Widths(cfg.model, cfg.args, cfg.scale).args_at(k)
    doc = {"model": {"name": cfg.model, "args": args}, "train": raw["train"]}
    header = f"# Written by `python -m stages.width configure --k {k}` from {params}; do not edit.\n"
    atomic_write_text(out, header + yaml.safe_dump(doc, sort_keys=False))
    console.print(f"width K = {k}: {cfg.model}({doc['model']['args']}) → {out}")


def summary(
    params: Path = ParamsOpt,
    prepared: Path = typer.Option(..., "--prepared", help="The prepared data the endpoints trained on (its meta)."),
    runs: Path = typer.Option(..., "--runs", help="Folder of k<K>/curve.json (eval_curve metrics per K)."),
    metrics: Path = typer.Option(..., "--metrics", help="Summary JSON (scalars only)."),
    table: Path = typer.Option(..., "--table", help="CSV, one row per K."),
    figure: Path = typer.Option(..., "--figure", help="PNG of barrier and length ratio against K."),
    markdown_out: Path = typer.Option(..., "--markdown", help="Markdown table (embedded in the report)."),
) -> None:
    """Barrier and length ratio against K from each K's eval_curve metrics (params: width)."""
    (cfg,) = read_sections(params, "width")
    widths = Widths(cfg.model, cfg.args, cfg.scale)
    info = read_info(prepared, f"{HINT} (subset).")
    curves = {k: read_json(runs / f"k{k}" / "curve.json", f"{HINT} (eval_curve@{k}).") for k in sorted(cfg.ks)}
    result = summarize(widths, curves, info.num_classes, info.channels, info.size)
    run = {"model": cfg.model, "args": cfg.args, "scale": list(cfg.scale), "ks": sorted(cfg.ks)}
    write_metrics(metrics, result.metrics, {**run, "parameters": result.parameters})
    write_csv(table, result.rows)
    width_effect(result.rows, figure, title=f"{cfg.model}: {widths.describe()}")
    atomic_write_text(markdown_out, result.markdown)
    console.print(result.markdown, highlight=False)


app = typer.Typer(add_completion=False, help="The width experiment's own stages (experiments/width/dvc.yaml).")
for name, fn in (("subset", subset), ("configure", configure), ("summary", summary)):
    app.command(name)(stage_app(fn).registered_commands[0].callback)

if __name__ == "__main__":
    app()
