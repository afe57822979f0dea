"""The stage command: errors for people, logging and progress output, and the options every stage shares.

:func:`stage_app` makes a stage's ``main`` a Typer command; a ``main`` that takes ``runtime`` gets the runtime
options (``--device``, ``--precision``, ``--channels-last``) resolved into one :class:`Runtime`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from modeconn.errors import ModeconnError
from modeconn.resume import Preempted, StaleState, discard_loaded, rng_state, set_rng_state
from modeconn.runtime import Runtime

from .launch import FAULT_ENV, PREEMPTED_EXIT, fault_step, launch, processes
from .layout import PARAMS, PREPARED

console = Console(stderr=True, soft_wrap=True)  # long summary lines are not cut at 80 columns in logs
log = logging.getLogger("modeconn")

# Typer options shared by the stage commands.
ParamsOpt = typer.Option(PARAMS, "--params", help="The params file to read settings from.")
DeviceOpt = typer.Option(
    "auto", "--device", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.", envvar="MODECONN_DEVICE"
)
PrecisionOpt = typer.Option(
    "auto",
    "--precision",
    envvar="MODECONN_PRECISION",
    help="auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16 (forced, also on CPU).",
)
ChannelsLastOpt = typer.Option(
    "auto",
    "--channels-last",
    envvar="MODECONN_CHANNELS_LAST",
    help="auto (on, CPU and CUDA alike: measured faster on both), 1 or 0 (forced): channels_last memory format.",
)
PreparedOpt = typer.Option(PREPARED, "--prepared", help="Folder written by the prepare stage.")


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is now (test runners swap it per command)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging() -> None:
    if log.handlers:
        return
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ModeconnError into a one-line message and exit code 1 (no traceback)."""
    setup_logging()
    try:
        yield
    except Preempted as exc:
        console.print(f"[bold yellow]preempted:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(PREEMPTED_EXIT) from None
    except ModeconnError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def stage_app(main: Callable[..., None], data_parallel: bool = False) -> typer.Typer:
    """The Typer app of a stage command ``main``, which raises ModeconnErrors for people to read.

    Errors become one line and exit code 1 (no traceback). If ``main`` takes ``runtime``, the command gets
    the runtime options ``--device``, ``--precision`` and ``--channels-last`` (and their environment
    variables) instead, resolved into one :class:`Runtime` that the first log line states.

    ``data_parallel`` stages (the training stages) run under ``torchrun`` when it starts them; with
    ``MODECONN_NPROC=N`` (N > 1) and no torchrun around, the command starts ``torchrun --standalone
    --nproc-per-node N`` on itself — how `dvc repro` runs a training stage on the N GPUs of one machine.
    """
    hints = typing.get_type_hints(main)
    signature = inspect.signature(main)
    wants_runtime = "runtime" in signature.parameters
    params = [p for name, p in signature.parameters.items() if name != "runtime"]
    if wants_runtime:
        for name, option in (("device", DeviceOpt), ("precision", PrecisionOpt), ("channels_last", ChannelsLastOpt)):
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str))
            hints[name] = str
    hints.pop("runtime", None)

    @functools.wraps(main)
    def command(**kwargs: Any) -> None:
        with user_errors():
            nproc = processes()
            if data_parallel and nproc > 1 and "WORLD_SIZE" not in os.environ:
                module = main.__module__
                if module == "__main__":  # run as `python -m stages.<name>`
                    module = sys.modules["__main__"].__spec__.name
                raise typer.Exit(launch(module, nproc))
            if not wants_runtime:
                main(**kwargs)
                return
            runtime = runtime_of(*(kwargs.pop(k) for k in ("device", "precision", "channels_last")))
            try:
                if fault_step(runtime) == 0:
                    raise ModeconnError(f"fault injected on rank {runtime.rank} ({FAULT_ENV}), as a drill")
                rng = rng_state()
                try:
                    main(**kwargs, runtime=runtime)
                except StaleState as exc:  # a resume state that does not fit (another code version)
                    discard_loaded(exc)  # warned and deleted: the run starts over, as if never saved
                    set_rng_state(rng)
                    main(**kwargs, runtime=runtime)
            finally:
                runtime.close()

    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = hints
    app = typer.Typer(add_completion=False)
    app.command()(command)
    return app


def runtime_of(device: str, precision: str, channels_last: str) -> Runtime:
    """The stage's runtime from its options (or their environment variables), stated in the first log line.

    In a data-parallel run only rank 0 logs progress; the other ranks report warnings and errors."""
    runtime = Runtime.resolve(device, precision, channels_last)
    if not runtime.is_main:
        log.setLevel(logging.WARNING)
    log.info("%s", runtime.describe())
    return runtime


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[typing.Callable[..., None]]:
    """Progress over ``total`` steps: a rich bar on a terminal, log lines otherwise.

    Yields ``advance(message="")`` to call once per step.
    """
    if console.is_terminal and not os.environ.get("MODECONN_PLAIN"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[msg]}"),
            console=console,
        ) as bar:
            task = bar.add_task(description, total=total, msg="")

            def advance(message: str = "") -> None:
                bar.update(task, advance=1, msg=message)

            yield advance
    else:
        step = [0]

        def advance(message: str = "") -> None:
            step[0] += 1
            log.info("%s %d/%d %s", description, step[0], total, message)

        yield advance
