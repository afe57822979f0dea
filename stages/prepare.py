"""Stage prepare: the dataset as uint8 tensors in one file, plus its metadata.

Looks for the raw files in ``data.raw_dir`` first, then (Fashion-MNIST) in
``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``,
then downloads through torchvision where a network exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from modeconn.data import AUGMENTATIONS, DATASETS, prepare

from .common import ParamsOpt, console, read_params, require, section, user_errors


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: which dataset, where its raw files are, the validation split and augmentation."""

    name: str
    raw_dir: str = "data/raw"
    val_size: int = 0
    augment: str = "default"
    seed: int = 0
    download: bool = True
    synthetic: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        require(self.name in DATASETS, f"data.name {self.name!r} is not a known dataset; use one of "
                f"{', '.join(DATASETS)}")
        require(self.val_size >= 0, f"data.val_size must be 0 (no validation split) or positive, got {self.val_size}")
        require(self.augment == "default" or self.augment in AUGMENTATIONS,
                f"data.augment {self.augment!r} unknown; use default or one of {', '.join(AUGMENTATIONS)}")


def main(
    params: Path = ParamsOpt,
    out: Path = typer.Option(Path("data/prepared"), "--out", help="Output folder (data.pt + meta.json)."),
) -> None:
    """Load the raw dataset named by data.name and write it as tensors to --out (params: data)."""
    with user_errors():
        cfg = section(read_params(params), "data", DataConfig)
        prepared = prepare(cfg.name, Path(cfg.raw_dir), out, val_size=cfg.val_size, seed=cfg.seed,
                           augment=cfg.augment, download=cfg.download,
                           synthetic_kwargs=cfg.synthetic if cfg.name == "synthetic" else None)
        val = 0 if prepared.val is None else prepared.val.y.numel()
        console.print(f"[bold]{prepared.info.name}[/]: {prepared.train.y.numel()} train, {val} validation, "
                      f"{prepared.test.y.numel()} test images of {tuple(prepared.train.x.shape[1:])}, "
                      f"{prepared.info.num_classes} classes, augmentation {prepared.info.augment} → {out}")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
