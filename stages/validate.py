"""Stage params: the whole params file checked before any other stage runs (the first stage of every dvc.yaml).

DVC deletes a stage's outputs before it runs the stage's command, so an error a stage finds in its own params
comes after its earlier results are gone (metrics written with ``cache: false`` cannot be restored). This stage
tracks the whole params file (a misspelt section too, which no other stage tracks) and validates every section in
it; every other stage depends on the marker file it writes, so DVC runs it first and stops at its error before
touching any other output. The marker's text never changes: a valid change still reruns only the stages whose own
params changed.

Beside each section's own checks, the batch sizes of ``--batch-sizes`` (the sections the pipeline trains with)
must fit the training images the training stages will read, where the params tell how many without running
prepare: synthetic data and image folders from the params alone, a named dataset from the prepared folder
``--prepared`` (its size, before the validation split) once prepare has made it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from modeconn.data import train_images
from modeconn.errors import ConfigError
from modeconn.io import atomic_write_text

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import (
    OTHER_SECTIONS,
    SECTIONS,
    SubsetConfig,
    check_batch_size,
    check_endpoint_refs,
    read_params,
    require,
    section,
)

MARKER = "params validated: every other stage depends on this file; its text never changes\n"
ALL_SECTIONS: dict[str, type] = {**SECTIONS, **OTHER_SECTIONS}  # the experiments' sections too
TRAINING = ("train", "curve", "fge", "sse", "instability", "simplex")  # sections whose batch_size draws training images
FILES = (("model", "weights"), ("curve", "endpoint_files"), ("curve", "init"), ("fge", "start_files"))  # user files
FILES += (("simplex", "start_files"), ("barriers", "files"))


def check_files(raw: dict, path: Path) -> None:
    """The files of the user's own that the params name exist (a stage would find it only after DVC deleted its
    outputs). Paths are relative to the folder the pipeline runs in."""
    for name, key in FILES:
        value = (raw.get(name) or {}).get(key)
        for file in [value] if isinstance(value, str) else value or []:
            if not (key == "init" and file == "linear"):
                require(
                    Path(file).is_file(), f"{name}.{key}: {file} not found (in {path}): put it there or fix the path"
                )


def training_images(params: dict, path: Path, prepared: Path | None) -> int | None:
    """The training images (after the validation split and subset.train_size) the training stages will read,
    or None where the params alone do not tell (a named dataset not prepared yet)."""
    data = section(params, "data", SECTIONS["data"], path)
    total = train_images(data.name, synthetic_kwargs=data.synthetic, imagefolder=data.imagefolder, prepared=prepared)
    if total is None:
        return None
    require(
        data.val_size < total,
        f"data.val_size={data.val_size} must be smaller than the {total} training images of {data.name} "
        f"(in {path}): lower data.val_size",
    )
    n = total - data.val_size
    if "subset" in params:
        subset = section(params, "subset", SubsetConfig, path)
        require(
            subset.train_size <= n,
            f"subset.train_size = {subset.train_size} exceeds the {n} train images left after data.val_size "
            f"(in {path})",
        )
        n = subset.train_size or n
    return n


def main(
    params: Path = ParamsOpt,
    out: Path = typer.Option(Path("data/params.ok"), "--out", help="The marker file written when all is valid."),
    prepared: Path | None = typer.Option(
        None, "--prepared", help="The prepared data (not a dep): how many images a named dataset has, once made."
    ),
    batch_sizes: str = typer.Option(
        "", "--batch-sizes", help="Comma-separated sections whose batch_size must fit the training images."
    ),
) -> None:
    """Validate every section of --params, then write the marker --out (params: the whole file)."""
    raw = read_params(params)  # unknown (misspelt) sections are errors
    for name in raw:
        section(raw, name, ALL_SECTIONS[name], params)
    check_files(raw, params)
    check_endpoint_refs(raw, params)
    names = [n for n in batch_sizes.split(",") if n]
    unknown = sorted(set(names) - set(TRAINING))
    if unknown:
        raise ConfigError(f"--batch-sizes: {unknown[0]!r} is not one of {', '.join(TRAINING)}")
    names = [n for n in names if n in raw]
    n_train = training_images(raw, params, prepared) if names else None
    if n_train is not None:
        where = f"the {'data and subset sections' if 'subset' in raw else 'data section'} of {params}"
        for name in names:
            check_batch_size(f"{name}.batch_size", raw[name]["batch_size"], n_train, where)
    atomic_write_text(out, MARKER)
    console.print(f"{params}: {', '.join(map(str, raw))} valid → {out}")


app = stage_app(main)

if __name__ == "__main__":
    app()
