"""What every stage shares: errors for people, progress output, the runtime options, the standard file
layout, and how metrics and run information are written.

A stage reads its sections of params.yaml (:mod:`stages.config`), calls the
library, and writes its outputs atomically. Each metrics JSON holds only the
numbers that compare runs (what `dvc metrics diff` and `dvc exp show` are for);
what ran — dataset, model, device, timings — goes beside it into
``<name>.run.json``, which the report reads.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.logging import RichHandler

import modeconn
from modeconn.data import EVAL_BATCH, EvalBatches, Loader, Prepared, eval_batches, load_prepared, read_info
from modeconn.errors import CheckpointError, ConfigError, ModeconnError
from modeconn.io import atomic_write_json, atomic_write_text, load_checkpoint
from modeconn.models import from_spec, load_weights, read_weights
from modeconn.resume import (
    Preempted,
    ResumeState,
    StaleState,
    as_plain,
    code_digests,
    digest,
    discard_loaded,
    fingerprint,
    rng_state,
    saved_parts,
    set_rng_state,
)
from modeconn.runtime import Runtime

from .config import SECTIONS, ModelConfig, read_sections

console = Console(stderr=True, soft_wrap=True)  # long summary lines are not cut at 80 columns in logs
log = logging.getLogger("modeconn")

PARAMS = Path("params.yaml")
RESUME_DIR = Path(".modeconn/resume")
NPROC_ENV = "MODECONN_NPROC"  # processes per training stage; a setting of the machine, not a param
FAULT_ENV = "MODECONN_FAULT_RANK"  # a drill: R (rank R raises at start) or R:I (at its I-th training step)
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on purpose after saving its state; rerun to continue
PREPARED = Path("data/prepared")
ENDPOINTS = Path("data/endpoints")

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


def processes() -> int:
    """$MODECONN_NPROC: processes per training stage (1: no torchrun)."""
    value = os.environ.get(NPROC_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{NPROC_ENV}={value!r}: set it to the number of processes per training stage (1, 2, …)")
    return int(value)


def fault_step(runtime: Runtime) -> int | None:
    """$MODECONN_FAULT_RANK, a failure drill for this process: 0 (raise at start), I (raise at its I-th
    training step, inside the training loop while the other ranks wait in the gradient all-reduce), or None
    (not this rank, or no drill). The value is ``R`` or ``R:I``."""
    value = os.environ.get(FAULT_ENV, "")
    if not value:
        return None
    rank, _, step = value.partition(":")
    if not rank.isdigit() or (step and not step.isdigit()):
        raise ConfigError(f"{FAULT_ENV}={value!r}: use RANK (fail at start) or RANK:ITERATION, e.g. 1 or 1:5")
    return int(step or 0) if int(rank) == runtime.rank else None


class _FaultyBatches:
    """A training loader that raises at this process's ``step``-th batch (counted over epochs): the drill of
    $MODECONN_FAULT_RANK=R:I. Everything else is the loader's."""

    def __init__(self, loader: Loader, rank: int, step: int):
        self._loader, self._rank, self._step, self._drawn = loader, rank, step, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator:
        for batch in self._loader:
            self._drawn += 1
            if self._drawn == self._step:
                raise ModeconnError(
                    f"fault injected on rank {self._rank} at training step {self._step} ({FAULT_ENV}), as a drill"
                )
            yield batch


def launch(module: str, nproc: int) -> int:
    """Run this command again under ``torchrun --standalone --nproc-per-node nproc``; its exit code.

    torchrun starts the processes, joins them, and ends them all when one fails (raises, or is killed). Its
    output passes through; on a failure the last line names the rank that failed first and how (torchrun's
    "Root Cause" record), so that the one line a log reader looks at says which process to read above."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *sys.argv[1:],
    ]
    log.info("starting %d processes: %s", nproc, " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:  # until torchrun and every rank have closed it
        sys.stderr.write(line)
        seen.append(line)
    code = proc.wait()
    if code:
        console.print(
            f"[bold red]error:[/] the {nproc}-process run of {module} failed{failed_rank(''.join(seen))} "
            f"(torchrun exit code {code}); the failing rank's message is above. Nothing was written.",
            highlight=False,
        )
    return code


def failed_rank(torchrun_output: str) -> str:
    """ ", rank R exited with code C" (or "was killed by SIGKILL") from torchrun's Root Cause record; "" if none."""
    _, found, cause = torchrun_output.rpartition("Root Cause")
    rank = re.search(r"rank\s*:\s*(\d+)", cause) if found else None
    if rank is None:
        return ""
    code = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    exit_code = int(code.group(1)) if code else None
    if exit_code is not None and exit_code < 0:
        try:
            how = f"was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            how = f"was killed by signal {-exit_code}"
    else:
        how = f"exited with code {exit_code}" if exit_code is not None else "failed"
    return f": rank {rank.group(1)} {how} first"


def train_loader(data: Prepared, batch_size: int, seed: int, runtime: Runtime) -> Loader:
    """The shuffled, augmented training batches of a training stage; this process's shard of each under torchrun
    (with the $MODECONN_FAULT_RANK=R:I drill, rank R's raise at its I-th batch)."""
    loader = Loader(
        data.train,
        data.info,
        batch_size,
        train=True,
        seed=seed,
        drop_last=True,
        channels_last=runtime.channels_last,
        shard=runtime.shard,
    )
    step = fault_step(runtime)
    return _FaultyBatches(loader, runtime.rank, step) if step else loader  # type: ignore[return-value]


def test_loader(data: Prepared, runtime: Runtime, split: str = "test") -> Loader:
    """The in-order, un-augmented batches of the test (or ``val``) split, for per-epoch and snapshot predictions."""
    return Loader(getattr(data, split), data.info, EVAL_BATCH, train=False, channels_last=runtime.channels_last)


def val_split(data: Prepared, runtime: Runtime) -> tuple[Loader | None, Any]:
    """(batches, labels) of the validation split, or (None, None) where ``data.val_size`` is 0."""
    if data.val is None:
        return None, None
    return test_loader(data, runtime, "val"), data.val.y.cpu()


def measurement_batches(data: Prepared, cfg: Any, runtime: Runtime) -> EvalBatches:
    """The passes that measure a point (BN, train subset, test, val) with the sizes of an eval-like section
    (``batch_size``, ``bn_samples``, ``train_samples``, optional ``test_samples``, ``seed``)."""
    return eval_batches(
        data,
        cfg.batch_size,
        bn_samples=cfg.bn_samples,
        train_samples=getattr(cfg, "train_samples", 0),
        test_samples=getattr(cfg, "test_samples", 0),
        seed=cfg.seed,
        channels_last=runtime.channels_last,
    )


def prepared_files(prepared: Path) -> tuple[Path, Path]:
    """The files of the prepare stage's folder (what a resume fingerprint reads)."""
    return prepared / "data.pt", prepared / "meta.json"


def prepared_data(prepared: Path, runtime: Runtime) -> Prepared:
    """The prepare stage's output, its tensors on the runtime's device."""
    return load_prepared(prepared, runtime.device, hint="Run `dvc repro prepare` (or python -m stages.prepare).")


def resume_state(run: str, runtime: Runtime, *settings: Any, inputs: tuple[Path, ...] = ()) -> ResumeState:
    """Where training run ``run`` (e.g. ``train_endpoint/seed_0``) saves its state each epoch, keyed by all that
    determines the run (DESIGN decision 10): its ``settings`` (config sections, named by their section; dicts of
    other values, named by their keys), the runtime, the content of its ``inputs`` files and of the weights file
    of a ``model`` section among the settings (``model.weights``), and the code: every ``.py`` file of the
    ``modeconn`` and ``stages`` packages, read once per process, and the versions of torch, torchvision and
    timm (:func:`package_versions`).

    Why all of the code rather than the modules the stage imports or the files its dvc.yaml deps list: both of
    those are narrower than what can change the run (modules imported lazily, mid-run; deps lists kept by hand,
    which a new import silently outgrows), and a code file left out is a state continued under other code —
    wrong numbers with no sign. All of it costs, at worst, the saved epochs of a preempted run after an edit of
    code it does not run; the digest takes milliseconds. A state of this run saved under another key is
    deleted with one warning that names what changed (settings by key, input files by name, code files by
    path), from the components the state records.

    The folder is $MODECONN_RESUME_DIR or ``.modeconn/resume`` — outside every DVC output, so a rerun of the
    stage (which deletes its outputs first) finds it.

    The number of processes is part of the key, and a run of N > 1 processes keeps its state in a subfolder
    ``processes_N`` of its own: N processes agree with one only to float precision (and with BatchNorm on
    gloo, where each process normalises with its shard, not at all), so continuing a state under another count
    would break the promise that a resumed run ends where an uninterrupted one does. A state saved by another
    process count under the same settings is therefore neither used nor deleted: rank 0 warns, naming that
    count and how to continue it ($MODECONN_NPROC), and this run starts from scratch.
    """
    root = Path(os.environ.get("MODECONN_RESUME_DIR", RESUME_DIR)) / run
    named, files = _named_settings(settings), {str(p): Path(p) for p in inputs}
    for s in settings:
        if isinstance(s, ModelConfig) and s.weights is not None:  # the network starts from it: by content too
            files["model.weights"] = Path(s.weights)
    digests = {name: digest(p) if p.is_file() else "missing" for name, p in files.items()}  # the stage names it
    code = {**code_digests(Path(modeconn.__file__).parent, Path(__file__).parent), **package_versions()}

    def parts_for(processes: int) -> dict:
        where = {"device": runtime.device.type, "precision": runtime.precision, "channels_last": runtime.channels_last}
        if runtime.device.type == "cpu":  # the thread count changes a CPU run's rounding (a GPU run's: no)
            where["threads"] = torch.get_num_threads()
        return {"settings": {**named, "runtime": {**where, "processes": processes}}, "inputs": digests, "code": code}

    def key_for(processes: int) -> str:
        return fingerprint(run, parts_for(processes))

    def folder_for(processes: int) -> Path:
        return root if processes == 1 else root / f"processes_{processes}"

    if runtime.is_main:
        counts = [1] + sorted(int(d.name.split("_")[1]) for d in root.glob("processes_*") if d.name[10:].isdigit())
        for n in counts:
            if n != runtime.world_size and any(
                same_run_but_threads(saved_parts(f), parts_for(n)) for f in folder_for(n).glob("*.pt")
            ):
                log.warning(
                    "a resume state of %s saved by %d process(es) is in %s (kept, not used): this run has %d; "
                    "rerun with %s=%d to continue it",
                    run,
                    n,
                    folder_for(n),
                    runtime.world_size,
                    NPROC_ENV,
                    n,
                )
    ws = runtime.world_size
    return ResumeState(folder_for(ws), key_for(ws), runtime=runtime, parts=parts_for(ws))


def same_run_but_threads(saved: Any, parts: dict) -> bool:
    """Whether a state's recorded ``parts`` are ``parts`` up to the CPU thread count: the same run saved by
    another process count, whose processes ran with their own thread count (torchrun gives each one thread)."""

    def plain(p: dict) -> str:
        runtime = {k: v for k, v in p["settings"]["runtime"].items() if k != "threads"}
        return json.dumps({**p, "settings": {**p["settings"], "runtime": runtime}}, sort_keys=True, default=str)

    try:
        return plain(saved) == plain(parts)
    except (KeyError, TypeError, AttributeError):  # no parts recorded (an older state), or another layout
        return False


def package_versions() -> dict[str, str]:
    """The versions of the packages whose code builds and trains the networks (torch, torchvision, and timm
    where installed), as entries of a resume key's code: a state saved under another torch is not continued."""
    versions = {}
    for name in ("torch", "torchvision", "timm"):
        try:
            versions[f"package {name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _named_settings(settings: tuple) -> dict:
    """The settings of a resume key by name, as plain data: a config section under its section's name, a dict's
    entries under their keys, anything else as ``setting N``."""
    sections = {cls: name for name, cls in SECTIONS.items()}
    named: dict = {}
    for i, s in enumerate(settings, 1):
        if type(s) in sections:
            named[sections[type(s)]] = as_plain(s)
        elif isinstance(s, dict):
            named.update(as_plain(s))
        else:
            named[f"setting {i}"] = as_plain(s)
    return named


def endpoint_checkpoint(path: Path) -> dict:
    """An endpoint checkpoint written by train_endpoint."""
    return load_checkpoint(path, "Run `dvc repro train_endpoint` (the seed must be in train.seeds).")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV, atomically (pandas keeps column order)."""
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))


def metrics_tree(obj: Any) -> Any:
    """``obj`` with every list turned into a mapping by position ("0", "1", …).

    `dvc metrics show/diff` read scalar leaves only and report a failure for any
    list; as mappings, ``endpoints: [0, 1]`` becomes ``endpoints.0``/``endpoints.1``.
    """
    if isinstance(obj, dict):
        return {k: metrics_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return {str(i): metrics_tree(v) for i, v in enumerate(obj)}
    return obj


def seq(value: Any) -> list:
    """A list written by :func:`write_json` (a mapping by position), back as a list."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=int)]
    return list(value)


def write_json(path: Path, obj: Any) -> None:
    """A metrics JSON, atomically, with scalar leaves only (see :func:`metrics_tree`)."""
    atomic_write_json(path, metrics_tree(obj))


def run_info_path(metrics: Path) -> Path:
    """Where the run information of the metrics file ``metrics`` lives: ``<name>.run.json`` beside it."""
    return Path(metrics).with_suffix(".run.json")


def write_metrics(path: Path, metrics: dict, run: dict) -> None:
    """The numbers that compare runs to ``path``; what ran (setup, device, timings) to its run file."""
    write_json(run_info_path(path), run)
    write_json(path, metrics)


def read_json(path: Path, hint: str) -> Any:
    """A JSON file, or a CheckpointError naming it and ending with ``hint``."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path} not found. {hint}")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}). {hint}") from None


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


def user_checkpoints(paths: typing.Sequence[Path], params: Path, prepared: Path, key: str, new_head: bool) -> list:
    """Checkpoints of the user's own (``curve.endpoint_files``, ``fge.start_files``) as modeconn checkpoints.

    A modeconn checkpoint keeps its spec, which must fit the prepared data; a plain state dict (or a file with a
    ``state_dict`` entry) is loaded into the network of params.yaml's ``model`` section on that data
    (modeconn.models.load_weights: with ``new_head``, a classifier of another number of classes stays freshly
    initialised). A file that does not fit is a CheckpointError naming ``key`` and the file.
    """
    info = read_info(prepared, hint="Run the prepare stage first (`dvc repro prepare`).")
    ckpts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CheckpointError(f"{key}: {path} not found")
        raw = torch_load_plain(path)
        if isinstance(raw, dict) and raw.get("format") == "modeconn.checkpoint/1":
            ckpt = load_checkpoint(path)
            spec = ckpt["spec"]
            if (spec["num_classes"], spec["in_channels"]) != (info.num_classes, info.channels):
                raise CheckpointError(
                    f"{key}: {path} is a {spec['name']} for {spec['num_classes']} classes of {spec['in_channels']} "
                    f"channel(s); the data ({info.name}) has {info.num_classes} classes of {info.channels}"
                )
        else:
            (model_cfg,) = read_sections(params, "model")
            spec = model_cfg.spec(info)
            model = from_spec(spec)
            try:
                load_weights(model, read_weights(path), f"{key}: {path} ({spec['name']})", new_head=new_head)
            except ConfigError as exc:
                raise CheckpointError(str(exc)) from None
            ckpt = {"format": "modeconn.checkpoint/1", "spec": spec, "state_dict": model.state_dict()}
        ckpts.append(ckpt)
    return ckpts


def torch_load_plain(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
