"""How a stage writes what it measured and reads it back.

Each metrics JSON holds only the numbers that compare runs (what `dvc metrics diff` and `dvc exp show` are for);
what ran — dataset, model, device, timings — goes beside it into ``<name>.run.json``, which the report reads.
Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from modeconn.errors import CheckpointError
from modeconn.io import atomic_write_json, atomic_write_text


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
