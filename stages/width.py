"""Stages of the width experiment (paper, Sec. 4, Fig. 3): experiments/width/dvc.yaml.

The experiment multiplies by K the model arguments that ``width.scale`` names, trains two endpoints and a
curve per K with the ordinary stages (train_endpoint, fit_curve, eval_curve), and plots against K the
curve's train-loss barrier and its length / segment length. The default, as in the paper's Fig. 3, scales
the fully connected layers of the 3-conv + 3-FC network only (``scale: [fc_width]``); ``[width, fc_width]``
scales the convolutions too. Three commands:

- ``subset``: a seeded subset of the prepared training and test splits (``subset`` section), so that four
  widths fit a CPU budget; the validation split, the normalisation statistics (of the whole training
  split) and the augmentation stay as prepared;
- ``configure --k K``: the params file of width K (the ``model`` section with ``width.args`` scaled by
  K where ``width.scale`` names the key, and the ``train`` section copied) for train_endpoint;
- ``summary``: one row per K from each K's eval_curve metrics (:func:`modeconn.metrics.width_point`) and
  the parameter counts of its network (conv and FC layers apart, so the table shows what K scaled),
  written as width.json (the barrier and length figures), width.csv, width.png and width.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import typer
import yaml
from torch import nn

from modeconn.data import read_info
from modeconn.errors import ConfigError
from modeconn.io import atomic_dir, atomic_write_text, load_file
from modeconn.metrics import width_point
from modeconn.models import MODELS, create_model
from modeconn.plots import width_effect

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import read_params, require, section
from .kit.records import read_json, write_csv, write_metrics

KOpt = typer.Option(..., "--k", help="The width factor K (one of width.ks).")


@dataclasses.dataclass(frozen=True)
class WidthConfig:
    """``width``: the factors K, the model and its base arguments, and which arguments K multiplies."""

    ks: tuple[int, ...]
    model: str
    args: dict
    scale: tuple[str, ...]

    def __post_init__(self):
        require(len(self.ks) >= 2, f"width.ks must list at least two width factors, got {list(self.ks)}")
        require(all(k >= 1 for k in self.ks), f"width.ks must be positive integers, got {list(self.ks)}")
        require(len(set(self.ks)) == len(self.ks), f"width.ks has a factor twice: {list(self.ks)}")
        require(self.model in MODELS, f"width.model {self.model!r} is not a known model")
        for key in self.scale:
            require(
                isinstance(self.args.get(key), int) and not isinstance(self.args.get(key), bool),
                f"width.scale names {key!r}, which must be an integer argument in width.args (got "
                f"{self.args.get(key)!r})",
            )

    def args_at(self, k: int) -> dict:
        """The model arguments of width factor ``k``: every key of ``scale`` multiplied by k."""
        return {key: v * k if key in self.scale else v for key, v in self.args.items()}

    @property
    def fixed(self) -> tuple[str, ...]:
        """The integer arguments that K leaves as they are (e.g. the conv ``width`` in the paper's setting)."""
        return tuple(
            key
            for key, v in self.args.items()
            if key not in self.scale and isinstance(v, int) and not isinstance(v, bool)
        )


def layer_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of the conv layers and the fully connected layers of ``model`` (weights and biases;
    normalisation layers count in neither)."""

    def count(kinds: tuple[type[nn.Module], ...]) -> int:
        return sum(p.numel() for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False))

    return {"conv_params": count((nn.Conv1d, nn.Conv2d, nn.Conv3d)), "fc_params": count((nn.Linear,))}


@dataclasses.dataclass(frozen=True)
class SubsetConfig:
    """``subset``: how many training and test images the width experiment uses (0 = all), drawn from ``seed``."""

    train_size: int
    test_size: int
    seed: int = 0

    def __post_init__(self):
        require(self.train_size >= 0, f"subset.train_size must be 0 (all) or positive, got {self.train_size}")
        require(self.test_size >= 0, f"subset.test_size must be 0 (all) or positive, got {self.test_size}")


def subset(
    params: Path = ParamsOpt,
    prepared: Path = typer.Option(..., "--prepared", help="Folder written by the prepare stage."),
    out: Path = typer.Option(..., "--out", help="The subset, in the prepare stage's format."),
) -> None:
    """Write a seeded subset of the prepared train and test splits (params: subset)."""
    cfg = section(read_params(params), "subset", SubsetConfig)
    hint = "Run `python -m stages.prepare` (or `dvc repro experiments/width/dvc.yaml`) first."
    tensors = load_file(prepared / "data.pt", "prepared data", hint)
    meta = json.loads((prepared / "meta.json").read_text())
    g = torch.Generator().manual_seed(cfg.seed)
    for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        n = int(tensors[f"{split}_y"].numel())
        if size > n:
            raise ConfigError(f"subset.{split}_size = {size} exceeds the {n} {split} images in {prepared}")
        if size:
            keep = torch.randperm(n, generator=g)[:size].sort().values
            tensors[f"{split}_x"], tensors[f"{split}_y"] = tensors[f"{split}_x"][keep], tensors[f"{split}_y"][keep]
        meta[f"n_{split}"] = int(tensors[f"{split}_y"].numel())
    meta["subset"] = dataclasses.asdict(cfg)
    with atomic_dir(out) as tmp:
        torch.save(tensors, tmp / "data.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    console.print(f"subset of {prepared}: {meta['n_train']} train, {meta['n_test']} test images → {out}")


def read_width(params: Path) -> tuple[dict, WidthConfig]:
    raw = read_params(params)
    return raw, section(raw, "width", WidthConfig)


def configure(
    k: int = KOpt,
    params: Path = ParamsOpt,
    out: Path = typer.Option(..., "--out", help="The params file of width K (model and train sections)."),
) -> None:
    """Write the params file that train_endpoint reads for width factor K (params: width, train)."""
    raw, cfg = read_width(params)
    if k not in cfg.ks:
        raise ConfigError(f"--k {k} is not one of width.ks {list(cfg.ks)} in {params}")
    if "train" not in raw:
        raise ConfigError(f"{params} has no 'train' section: the endpoints of each width need it")
    doc = {"model": {"name": cfg.model, "args": cfg.args_at(k)}, "train": raw["train"]}
    header = f"# Written by `python -m stages.width configure --k {k}` from {params}; do not edit.\n"
    atomic_write_text(out, header + yaml.safe_dump(doc, sort_keys=False))
    console.print(f"width K = {k}: {cfg.model}({doc['model']['args']}) → {out}")


def scaling(cfg: WidthConfig) -> str:
    """What K does, in words: ``fc_width = K × 16; width = 2 at every K``."""
    base = ", ".join(str(cfg.args[s]) for s in cfg.scale)
    scaled = f"{', '.join(cfg.scale)} = K × " + (f"({base})" if len(cfg.scale) > 1 else base)
    fixed = ", ".join(f"{key} = {cfg.args[key]}" for key in cfg.fixed)
    return scaled + (f"; {fixed} at every K" if fixed else "")


def markdown(rows: list[dict], cfg: WidthConfig) -> str:
    names = [*cfg.fixed, *cfg.scale]  # every integer argument, those K leaves first
    lines = [
        f"Width experiment (Sec. 4, Fig. 3): {cfg.model} with {scaling(cfg)}. "
        "Barrier: worst train loss along the Bezier curve minus the larger endpoint train loss.",
        "",
        "| K | " + " | ".join(names) + " | conv params | FC params | train loss barrier | train NLL barrier | "
        "endpoint train loss | curve max test error | length ratio |",
        "|---" * (8 + len(names)) + "|",
    ]
    for r in rows:
        args = cfg.args_at(r["k"])
        lines.append(
            f"| {r['k']} | "
            + " | ".join(str(args[s]) for s in names)
            + f" | {r['conv_params']:,} | {r['fc_params']:,}"
            + f" | {r['train_loss_barrier']:.4f} | {r['train_nll_barrier']:.4f} | {r['endpoint_train_loss']:.4f} | "
            f"{100 * r['max_test_error']:.2f}% | {r['length_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


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
    _, cfg = read_width(params)
    info = read_info(prepared, "Run `dvc repro experiments/width/dvc.yaml` (subset).")
    rows = []
    for k in sorted(cfg.ks):
        cur = read_json(runs / f"k{k}" / "curve.json", f"Run `dvc repro experiments/width/dvc.yaml` (eval_curve@{k}).")
        net = create_model(cfg.model, info.num_classes, info.channels, info.size, **cfg.args_at(k))
        rows.append(
            {**width_point(k, cur), "max_test_error": cur["curve"]["test_error"]["max"], **layer_parameters(net)}
        )
    counts = ("conv_params", "fc_params")  # in the table and run info, not metrics: they describe the runs
    result = {f"k{r['k']}": {key: v for key, v in r.items() if key not in ("k", *counts)} for r in rows}
    first, last = rows[0], rows[-1]
    result["change"] = {  # smallest K to largest: the paper's claim is that both fall
        "train_loss_barrier": last["train_loss_barrier"] - first["train_loss_barrier"],
        "length_ratio": last["length_ratio"] - first["length_ratio"],
    }
    run = {
        "model": cfg.model,
        "args": cfg.args,
        "scale": list(cfg.scale),
        "ks": sorted(cfg.ks),
        "parameters": {f"k{r['k']}": {key: r[key] for key in counts} for r in rows},
    }
    write_metrics(metrics, result, run)
    write_csv(table, rows)
    width_effect(rows, figure, title=f"{cfg.model}: {scaling(cfg)}")
    text = markdown(rows, cfg)
    atomic_write_text(markdown_out, text)
    console.print(text, highlight=False)


app = typer.Typer(add_completion=False, help="The width experiment's own stages (experiments/width/dvc.yaml).")
for name, fn in (("subset", subset), ("configure", configure), ("summary", summary)):
    app.command(name)(stage_app(fn).registered_commands[0].callback)

if __name__ == "__main__":
    app()
