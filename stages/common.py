"""What every stage shares: params.yaml sections as validated frozen dataclasses,
errors for people, progress output, and the standard file layout.

A stage reads only its own sections of params.yaml (dvc.yaml lists those keys),
validates them into a frozen dataclass whose errors name the bad key, calls the
library, and writes its outputs atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler

from modeconn.errors import ConfigError, ModeconnError

console = Console(stderr=True, soft_wrap=True)  # long summary lines are not cut at 80 columns in logs
log = logging.getLogger("modeconn")

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
ENDPOINTS = Path("data/endpoints")

# Typer options shared by the stage commands.
ParamsOpt = typer.Option(PARAMS, "--params", help="The params file to read settings from.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.",
                         envvar="MODECONN_DEVICE")
PreparedOpt = typer.Option(PREPARED, "--prepared", help="Folder written by the prepare stage.")


def setup_logging() -> None:
    if log.handlers:
        return
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
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
    except ModeconnError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def read_params(path: Path) -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"params file {path} not found: run from the project root or pass --params")
    try:
        params = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of sections (data, model, train, ...)")
    return params


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key} must not be null")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return tuple(_check_type(v, arg, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 5e-4 as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")


T = typing.TypeVar("T")


def section(params: dict, name: str, cls: type[T]) -> T:
    """Validate ``params[name]`` into the frozen dataclass ``cls``.

    Unknown keys, missing keys and wrong types are ConfigErrors naming
    ``name.key``; ``cls.__post_init__`` checks ranges the same way.
    """
    raw = params.get(name)
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml has no '{name}' section (or it is not a mapping)")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]} in params.yaml; {name} takes: {', '.join(fields)}")
    values = {}
    for key, f in fields.items():
        if key not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ConfigError(f"missing key {name}.{key} in params.yaml")
            continue
        values[key] = _check_type(raw[key], hints[key], f"{name}.{key}")
    return cls(**values)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_sgd(name: str, cfg: Any) -> None:
    """The SGD settings every training section shares: batch_size, momentum, wd (and lr where it has one)."""
    require(cfg.batch_size >= 1, f"{name}.batch_size must be at least 1, got {cfg.batch_size}")
    if hasattr(cfg, "lr"):
        require(cfg.lr > 0, f"{name}.lr must be positive, got {cfg.lr}")
    require(0 <= cfg.momentum < 1, f"{name}.momentum must be in [0, 1), got {cfg.momentum}")
    require(cfg.wd >= 0, f"{name}.wd must be non-negative, got {cfg.wd}")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV, atomically (pandas keeps column order)."""
    import pandas as pd

    from modeconn.io import atomic_write_text

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
    from modeconn.io import atomic_write_json

    atomic_write_json(path, metrics_tree(obj))


def read_json(path: Path, hint: str) -> Any:
    from modeconn.errors import CheckpointError

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

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[msg]}"), console=console) as bar:
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


def fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------- shared sections


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``model``: the architecture every trained network uses (see modeconn.models)."""

    name: str
    args: dict = dataclasses.field(default_factory=dict)


def load_prepared(prepared: Path, device):
    """The prepare stage's output, on ``device``, with a hint if it is missing."""
    from modeconn.data import load_prepared as _load

    return _load(prepared, device=device)


def model_spec(cfg: ModelConfig, info) -> dict:
    return {"name": cfg.name, "num_classes": info.num_classes, "in_channels": info.channels,
            "input_size": info.size, "args": dict(cfg.args)}


def build_model(spec: dict):
    from modeconn.models import create_model

    return create_model(spec["name"], spec["num_classes"], in_channels=spec["in_channels"],
                        input_size=spec["input_size"], **spec["args"])


EVAL_BATCH = 1000  # batch size of pure inference passes (no effect on results)
