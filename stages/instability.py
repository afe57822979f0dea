"""Stages of the instability experiment (Frankle et al. 2020): experiments/instability/dvc.yaml, over
modeconn.instability.

- ``pair --k K --seed S``: the parent of seed S trained to step K, its two children trained on to the end with
  data orders of their own, the segment between them measured (:func:`modeconn.instability.children_at`); writes
  the pair's row (JSON: barriers, errors, verdict) and the segment's measures along α (CSV);
- ``summary``: the rows of every (k, seed) as a table (CSV), barrier against k with mean ± std over seeds
  (Markdown, figure) and the headline: the first stable k and the mean barrier at the first and last k.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from modeconn import instability as inst
from modeconn.data import eval_batches
from modeconn.errors import ConfigError
from modeconn.io import atomic_write_text
from modeconn.runtime import CPU, Runtime

from .kit.cli import ParamsOpt, PreparedOpt, console, stage_app
from .kit.config import check_batch_size, read_sections
from .kit.inputs import prepared_data, train_loader
from .kit.records import read_json, write_csv, write_json, write_metrics

HINT = "Run `dvc repro experiments/instability/dvc.yaml`"


def pair(
    k: int = typer.Option(..., "--k", help="The step (iteration) where the parent splits (one of instability.ks)."),
    seed: int = typer.Option(..., "--seed", help="The parent's seed (one of instability.seeds)."),
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    metrics: Path = typer.Option(..., "--metrics", help="The pair's row (JSON)."),
    table: Path = typer.Option(..., "--table", help="The segment's measures at each α (CSV)."),
    runtime: Runtime = CPU,
) -> None:
    """Train the parent of --seed to step --k and its two children to the end; measure their segment (params:
    model, instability)."""
    cfg, model_cfg = read_sections(params, "instability", "model")
    if k not in cfg.ks or seed not in cfg.seeds:
        raise ConfigError(f"--k {k} --seed {seed}: not in instability.ks {list(cfg.ks)} and seeds {list(cfg.seeds)}")
    data = prepared_data(prepared, runtime)
    check_batch_size("instability.batch_size", cfg.batch_size, len(data.train), prepared)
    batches = train_loader(data, cfg.batch_size, seed, runtime)
    evals = eval_batches(data, cfg.eval_batch_size, bn_samples=cfg.bn_samples, train_samples=cfg.train_samples,
                         channels_last=runtime.channels_last)  # fmt: skip
    schedule = inst.Schedule(cfg.epochs, cfg.lr, cfg.momentum, cfg.wd)
    result = inst.children_at(
        lambda: model_cfg.build(data.info), batches, evals, k, seed, schedule, num_points=cfg.num_points,
        runtime=runtime,
    )  # fmt: skip
    row = result.row(len(batches))
    spec = model_cfg.spec(data.info)
    run = dict(model=spec["name"], model_args=spec["args"], iterations=schedule.total(batches), **runtime.as_dict())
    write_metrics(metrics, row, run)
    write_csv(table, result.path.to_dict("records"))
    verdict = "stable" if row["stable"] else "unstable"
    console.print(f"k {k} seed {seed}: test error barrier {100 * row['test_barrier']:.2f}% ({verdict}) → {metrics}")


def summary(
    params: Path = ParamsOpt,
    runs: Path = typer.Option(..., "--runs", help="Folder of k<K>/seed_<S>.json (the pair stage's rows)."),
    table: Path = typer.Option(..., "--table", help="CSV, one row per (k, seed)."),
    markdown_out: Path = typer.Option(..., "--markdown", help="Markdown table, mean ± std over seeds per k."),
    figure: Path = typer.Option(..., "--figure", help="PNG of the error barrier against k."),
    headline: Path = typer.Option(..., "--headline", help="The experiment's headline metrics (JSON)."),
) -> None:
    """Barrier against k over the parent seeds from every pair's row (params: instability)."""
    cfg, model_cfg = read_sections(params, "instability", "model")
    rows = [read_json(runs / f"k{k}" / f"seed_{s}.json", f"{HINT} (pair@{k}-{s}).") for k in cfg.ks for s in cfg.seeds]
    frame = pd.DataFrame(rows, columns=list(inst.COLUMNS))
    result = inst.summarize(frame)
    first = inst.stable_from(frame)
    write_csv(table, frame.to_dict("records"))
    text = inst.markdown(result) + inst.verdict(result, first)
    atomic_write_text(markdown_out, text)
    title = f"{model_cfg.name}, {cfg.epochs} epochs, {len(cfg.seeds)} parent seeds"
    inst.plot(result, figure, title=title)
    write_json(headline, {"instability": inst.headline(result, first)})
    console.print(text, highlight=False)


app = typer.Typer(add_completion=False, help="The instability experiment's stages (experiments/instability).")
for name, fn in (("pair", pair), ("summary", summary)):
    app.command(name)(stage_app(fn).registered_commands[0].callback)

if __name__ == "__main__":
    app()
