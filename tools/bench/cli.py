"""The command ``python -m tools.bench``: its options, a status line while it measures, the report and the
JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from modeconn.errors import ModeconnError
from modeconn.io import atomic_write_json
from stages.kit.cli import ChannelsLastOpt, DeviceOpt, PrecisionOpt

from .measure import run
from .paper import PAPER_CPU_BATCHES
from .report import report
from .settings import BN_IMAGES, USUAL_WORKERS, Settings


@contextmanager
def _status(console: Console) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on a terminal; silent otherwise."""
    if not console.is_terminal:
        yield lambda message: None
        return
    with console.status("") as spinner:
        yield lambda message: spinner.update(f"measuring: {message}")


def main(
    params: Path = typer.Option(Path("params.yaml"), "--params", help="The params file (data and model sections)."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    channels_last: str = ChannelsLastOpt,
    batches: int = typer.Option(
        Settings.batches,
        "--batches",
        help="Timed training batches (of 128) per run; also caps the evaluation batches (of 1000).",
    ),
    repeats: int = typer.Option(
        Settings.repeats, "--repeats", help="Interleaved rounds; a figure is the median over them."
    ),
    workers: int = typer.Option(
        Settings.workers,
        "--workers",
        help=f"A DataLoader worker count to try besides {' and '.join(map(str, USUAL_WORKERS))} (always tried).",
    ),
    bn_images: int = typer.Option(BN_IMAGES, "--bn-images", help="Training images in the BN recalibration pass."),
    dataset: str = typer.Option(None, "--dataset", help="Use this dataset instead of data.name (e.g. synthetic)."),
    augment: str = typer.Option(
        None, "--augment", help="Use this augmentation instead of data.augment (none, crop, flip, crop_flip, default)."
    ),
    paper_model: bool | None = typer.Option(
        None,
        "--paper-model/--no-paper-model",
        help="Also measure the paper's VGG16 on 3x32x32 synthetic data (default: on for CUDA, off elsewhere).",
    ),
    paper_batches: int = typer.Option(
        None,
        "--paper-batches",
        help=f"Timed batches (of 128) of the VGG16 figures (default: --batches on CUDA, {PAPER_CPU_BATCHES} on CPU).",
    ),
    peers_: bool = typer.Option(
        True,
        "--peers/--no-peers",
        help="Also time the official code's training, curve training and evaluation point (tools/official_loops.py).",
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Measure training, evaluation, curve-training and BN-recalibration speed of the default model and data."""
    out = Console()
    try:
        settings = Settings(
            params=params,
            device=device,
            precision=precision,
            channels_last=channels_last,
            batches=batches,
            repeats=repeats,
            workers=workers,
            bn_images=bn_images,
            dataset=dataset,
            augment=augment,
            paper_model=paper_model,
            paper_batches=paper_batches,
            peers=peers_,
        )
        with _status(Console(stderr=True)) as status:
            result = run(settings, status)
    except ModeconnError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    report(result, out)
    if json_out is not None:
        atomic_write_json(json_out, result.as_dict())


app = typer.Typer(add_completion=False)
app.command()(main)
