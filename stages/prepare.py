"""Stage prepare: the dataset as uint8 tensors in one file, plus its metadata.

Looks for the raw files in ``data.raw_dir`` first, then (Fashion-MNIST) in
``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``,
then downloads through torchvision where a network exists. ``data.name: imagefolder`` reads an image
folder instead (``data.imagefolder``: root, size, optional resize, max_per_class, mean/std; see
modeconn.data.imagefolder).
"""

from __future__ import annotations

from pathlib import Path

import typer

from modeconn.data import prepare
from modeconn.errors import ConfigError

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import read_sections
from .kit.layout import PREPARED


def main(
    params: Path = ParamsOpt,
    out: Path = typer.Option(PREPARED, "--out", help="Output folder (data.pt + meta.json)."),
) -> None:
    """Load the raw dataset named by data.name and write it as tensors to --out (params: data)."""
    (cfg,) = read_sections(params, "data")
    try:
        prepared = prepare(
            cfg.name,
            Path(cfg.raw_dir),
            out,
            val_size=cfg.val_size,
            seed=cfg.seed,
            augment=cfg.augment,
            download=cfg.download,
            synthetic_kwargs=cfg.synthetic if cfg.name == "synthetic" else None,
            imagefolder=cfg.imagefolder if cfg.name == "imagefolder" else None,
        )
    except ConfigError as exc:  # the library names its argument; the user edits data.val_size in this file
        if str(exc).startswith("val_size"):
            raise ConfigError(f"data.{exc} (in {params}): lower data.val_size") from None
        raise
    val = 0 if prepared.val is None else prepared.val.y.numel()
    console.print(
        f"[bold]{prepared.info.name}[/]: {prepared.train.y.numel()} train, {val} validation, "
        f"{prepared.test.y.numel()} test images of {tuple(prepared.train.x.shape[1:])}, "
        f"{prepared.info.num_classes} classes, augmentation {prepared.info.augment} → {out}"
    )


app = stage_app(main)

if __name__ == "__main__":
    app()
