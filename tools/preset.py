"""Presets: the paper's settings for one model and dataset, applied to params.yaml in one command.

``presets/<name>.yaml`` holds the params.yaml sections and keys a preset sets (same schema as
params.yaml; its first line is a one-line description). ``apply`` merges it into the params file —
each key the preset sets replaces the file's value as a whole (``model.args`` included), every other
key stays, comments included — validates every section of the result, and only then replaces the file
(written to a temporary file beside it, validated, moved into place). It prints what will run: per
stage, the epochs and an estimated GPU time.

    python -m tools.preset list
    python -m tools.preset apply vgg16-cifar10 [--params params.yaml] [--dry-run]
    dvc repro

The GPU times are estimates, not measurements: seconds per training epoch on one A100-class GPU
(:data:`GPU_ASSUMPTION`) times the epochs each stage runs (:func:`estimate`).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from modeconn.errors import ConfigError
from stages.kit.cli import user_errors
from stages.kit.config import SECTIONS, read_sections
from stages.kit.layout import PARAMS

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
HEADER = "# Preset applied:"  # first line of a params file written by `apply`

# ------------------------------------------------------------------ the GPU-time estimate

GPU_ASSUMPTION = (
    "one A100-class datacenter GPU, bf16 autocast + channels_last, batch 128, data on the GPU, "
    "CIFAR (45,000 training images)"
)
# Seconds per training epoch (forward + backward over the training set, plus the per-epoch test pass) under
# GPU_ASSUMPTION. ESTIMATES from the models' size and typical CIFAR throughput, NOT measurements: modeconn's
# CUDA path has not been timed yet. Replace them with `make bench`-style figures once it has.
EPOCH_SECONDS = {"vgg16": 6.0, "preresnet-164": 20.0, "wideresnet-28-10": 35.0}
CURVE_EPOCH_FACTOR = 1.3  # a curve epoch: φ_θ(t) per batch, then an ordinary step (paper: under 1.5×)
EVAL_POINT_EPOCHS = 0.6  # one point of t or of the plane: BN pass over the training set + train and test passes
BN_TEST_POINT_EPOCHS = 0.35  # a random point of path_ensembles: BN pass over the training set + test pass


def model_key(model: dict) -> str:
    """The EPOCH_SECONDS key of a ``model`` section: ``vgg16``, ``preresnet-164``, ``wideresnet-28-10``."""
    name, args = model.get("name", "?"), model.get("args") or {}
    if name == "preresnet":
        return f"preresnet-{args.get('depth', 110)}"
    if name == "wideresnet":
        return f"wideresnet-{args.get('depth', 28)}-{args.get('widen_factor', 10)}"
    return str(name)


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    """What one stage runs, in training-epoch equivalents, and its estimated GPU seconds (None: no figure)."""

    stage: str
    work: str
    epochs: float
    seconds: float | None


def gpu_seconds(epochs: float, epoch_seconds: float) -> float:
    """Estimated GPU seconds of ``epochs`` training-epoch equivalents at ``epoch_seconds`` per epoch."""
    if epochs < 0 or epoch_seconds <= 0:
        raise ValueError(f"epochs must be >= 0 and seconds per epoch > 0, got {epochs}, {epoch_seconds}")
    return epochs * epoch_seconds


def estimate(params: dict) -> list[StageEstimate]:
    """Per stage of dvc.yaml: what it runs and its estimated GPU time, from a params mapping.

    Pure: depends on ``params`` and the constants above only. prepare, compare and report run on the
    CPU in seconds and count 0. Seconds are None for a model without an EPOCH_SECONDS figure.
    """
    tr, cu, ev, fg, ss, pl = (params[k] for k in ("train", "curve", "eval", "fge", "sse", "plane"))
    per_epoch = EPOCH_SECONDS.get(model_key(params["model"]))
    seeds, starts, points, grid = len(tr["seeds"]), len(fg["start_seeds"]), ev["num_points"], pl["grid_points"]
    rows = [
        ("prepare", "dataset to tensors (CPU)", 0.0),
        (f"train_endpoint ×{seeds}", f"{seeds} × {tr['epochs']} epochs", seeds * tr["epochs"]),
        ("fit_curve", f"{cu['epochs']} curve epochs (×{CURVE_EPOCH_FACTOR})", cu["epochs"] * CURVE_EPOCH_FACTOR),
        ("eval_curve", f"2 paths × {points} points", 2 * points * EVAL_POINT_EPOCHS),
        ("fge", f"{starts} runs × {fg['epochs']} epochs", starts * fg["epochs"]),
        ("sse", f"{ss['epochs']} epochs, {ss['cycles']} cycles", float(ss["epochs"])),
        ("compare", "arithmetic on stored predictions (CPU)", 0.0),
        ("plane", f"{grid} × {grid} grid + 3 points", (grid * grid + 3) * EVAL_POINT_EPOCHS),
        ("path_ensembles", f"{points} random points", points * BN_TEST_POINT_EPOCHS),
        ("report", "metrics/report.md (CPU)", 0.0),
    ]
    return [
        StageEstimate(stage, work, float(ep), None if per_epoch is None else gpu_seconds(ep, per_epoch))
        for stage, work, ep in rows
    ]


def total_seconds(rows: list[StageEstimate]) -> float | None:
    if any(r.seconds is None for r in rows):
        return None
    return sum(r.seconds for r in rows)  # type: ignore[misc]


def hours(seconds: float | None) -> str:
    """An estimate for people: ``~25 min``, ``~4.1 h`` (``—`` for none or zero)."""
    if not seconds:
        return "—"
    if seconds < 3600:
        return f"~{max(1, round(seconds / 60))} min"
    return f"~{seconds / 3600:.1f} h"


def assumption(model: dict) -> str:
    key = model_key(model)
    figures = ", ".join(f"{k} {v:g} s" for k, v in EPOCH_SECONDS.items())
    own = f"{key}: {EPOCH_SECONDS[key]:g} s per epoch" if key in EPOCH_SECONDS else f"no per-epoch figure for {key}"
    return (
        f"Estimated GPU time, not measured: {own} on {GPU_ASSUMPTION} (per training epoch: {figures}; "
        f"a curve epoch {CURVE_EPOCH_FACTOR}×; an evaluation point {EVAL_POINT_EPOCHS} epoch)."
    )


# ------------------------------------------------------------------ presets and merging


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, key order and flow style
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    names = available()
    if name not in names:
        listed = ", ".join(names) or "none"
        raise ConfigError(f"unknown preset {name!r}; available presets: {listed} (in {PRESETS_DIR})")
    return PRESETS_DIR / f"{name}.yaml"


def description(name: str) -> str:
    """The preset's one-line description: the first line of its file, a comment."""
    first = preset_path(name).read_text().split("\n", 1)[0]
    return first.lstrip("#").strip()


def read_mapping(path: Path, what: str, expected: str) -> CommentedMap:
    """The YAML mapping in ``path`` (comments kept), or a ConfigError naming ``what`` and the ``expected`` shape."""
    try:
        data = _yaml().load(path.read_text())
    except YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of {expected}")
    return data


def load_preset(name: str) -> CommentedMap:
    path = preset_path(name)
    preset = read_mapping(path, f"preset {path}", "params.yaml sections")
    for section, keys in preset.items():
        if section not in SECTIONS:
            raise ConfigError(f"preset {path}: unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        if not isinstance(keys, dict):
            raise ConfigError(f"preset {path}: section {section!r} must be a mapping of keys")
    return preset


def merge(params: dict, preset: dict, name: str | None = None) -> tuple[dict, list[tuple[str, Any, Any]]]:
    """``params`` with every ``section.key`` of ``preset`` replaced (values as a whole), and the changes.

    Returns the merged mapping (a copy; ``params`` is not modified) and ``(section.key, old, new)`` for
    each key whose value changes (old is None for a key the file lacked). With ``name``, on a round-trip
    (ruamel) mapping, the end-of-line comment of every key the preset sets becomes ``# preset <name>``
    (the old one may no longer be true); blank lines and full-line comments after it are kept. Every
    preset sets the same keys, so applying B over A gives the same file as applying B alone.
    """
    merged = copy.deepcopy(params)
    changes = []
    for section, keys in preset.items():
        target = merged.get(section)
        if not isinstance(target, dict):
            target = merged[section] = CommentedMap()
        for key, value in keys.items():
            old = target.get(key)
            if key not in target or _plain(old) != _plain(value):
                changes.append((f"{section}.{key}", _plain(old) if key in target else None, _plain(value)))
            value = copy.deepcopy(value)
            if isinstance(value, (CommentedMap, CommentedSeq)):
                value.fa.set_flow_style()  # one line: the key's comment and what follows stay in place
            if name is None or not isinstance(target, CommentedMap):
                target[key] = value
                continue
            if key in target:
                tail = _take_tail(target, key)
            elif len(target):  # a new last key: the lines after the section move below it
                tail = _take_tail(target, list(target)[-1])
            else:
                tail = ""
            target[key] = value
            target.yaml_add_eol_comment(f"preset {name}", key, column=29)
            target.ca.items[key][2].value = f"# preset {name}\n" + tail
    return merged, changes


def _take_tail(cmap: Any, key: Any) -> str:
    """Remove and return what follows the line of ``cmap[key]``: blank lines and full-line comments.

    ruamel keeps them in the comment token of the last scalar before them, which for a block collection
    is its last element (found recursively); the key's own end-of-line comment stays (or is replaced).
    """
    value = cmap[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
        last = list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1
        return _take_tail(value, last)
    entry = cmap.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return ""
    first, _, rest = token.value.partition("\n")
    token.value = first + "\n" if first.strip() else "\n"
    return rest


def _plain(value: Any) -> Any:
    """A round-trip YAML value as plain dicts, lists and numbers (for comparing and printing)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return value


def render(merged: CommentedMap, name: str) -> str:
    buf = io.StringIO()
    _yaml().dump(merged, buf)
    lines = buf.getvalue().split("\n")
    while lines and lines[0].startswith(HEADER):
        lines.pop(0)
    head = f"{HEADER} {name} (python -m tools.preset); the values it sets say '# preset {name}'."
    return head + "\n" + "\n".join(lines)


def write_validated(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` only if every section of it validates: temp file beside it, check, replace."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            read_sections(tmp, *SECTIONS)
        except ConfigError as exc:  # name the file the user edits, not the temp file it is checked in
            raise ConfigError(str(exc).replace(str(tmp), str(path))) from None
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_params(path: Path) -> CommentedMap:
    if not path.is_file():
        raise ConfigError(f"params file {path} not found: run from the project root or pass --params")
    return read_mapping(path, str(path), "sections (data, model, train, ...)")


# ------------------------------------------------------------------ the commands


def _out() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def estimate_table(params: dict, title: str) -> Table:
    rows = estimate(params)
    table = Table(title=title, caption=assumption(params["model"]), caption_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("runs")
    table.add_column("epoch equiv.", justify="right")
    table.add_column("est. GPU time", justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r.stage, r.work, f"{r.epochs:g}" if r.epochs else "—", hours(r.seconds))
    table.add_row("total", "", f"{sum(r.epochs for r in rows):g}", hours(total_seconds(rows)), style="bold")
    return table


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])


@app.command("list")
def list_presets() -> None:
    """Each preset with its description and estimated GPU hours (one A100-class GPU)."""
    with user_errors():
        out = _out()
        table = Table(caption=f"Estimates, not measurements: {GPU_ASSUMPTION}.", caption_justify="left")
        table.add_column("preset", no_wrap=True)
        table.add_column("what it reproduces")
        table.add_column("est. GPU time", justify="right", no_wrap=True)
        for name in available():
            params = _plain(load_preset(name))
            # A preset that sets only some sections (resnet50-imagenet: data, model, fge) has no whole-run figure.
            whole = all(k in params for k in ("train", "curve", "eval", "fge", "sse", "plane"))
            table.add_row(name, description(name), hours(total_seconds(estimate(params))) if whole else "—")
        out.print(table)
        out.print("Apply one with: python -m tools.preset apply NAME  (then: dvc repro)")


@app.command("apply")
def apply(
    name: str = typer.Argument(..., help="Preset name (python -m tools.preset list)."),
    params: Path = typer.Option(PARAMS, "--params", help="The params file to update."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the changes and the estimate; write nothing."),
) -> None:
    """Merge preset NAME into the params file (validated before it is written) and show the GPU-time estimate."""
    with user_errors():
        out = _out()
        preset = load_preset(name)
        current = load_params(params)
        merged, changes = merge(current, preset, name)
        text = render(merged, name)
        if dry_run:
            with tempfile.TemporaryDirectory() as tmp:  # validate exactly what would be written
                check = Path(tmp) / params.name
                check.write_text(text)
                read_sections(check, *SECTIONS)
        else:
            write_validated(params, text)
        note = " (dry run: not written)" if dry_run else ""
        changed = Table(title=f"{len(changes)} keys change in {params}{note}")
        for col in ("key", "was", "now"):
            changed.add_column(col)
        for key, old, new in changes:
            changed.add_row(key, "—" if old is None else repr(old), repr(new))
        out.print(changed)
        out.print(estimate_table(_plain(merged), f"What `dvc repro` will run with preset {name}"))
        if not dry_run:
            out.print(f"{params} updated. Next: dvc repro   (CIFAR files: downloaded, or from data.raw_dir)")


if __name__ == "__main__":
    app()
