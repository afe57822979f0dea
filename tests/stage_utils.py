"""Helpers for driving the stage commands in a temporary workspace."""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")

TINY = {
    "data": {
        "name": "synthetic",
        "raw_dir": "data/raw",
        "val_size": 48,
        "augment": "crop_flip",
        "seed": 0,
        "download": False,
        "synthetic": {"n_train": 240, "n_test": 96, "num_classes": 4, "channels": 1, "size": 28, "seed": 0},
    },
    "model": {"name": "convfc", "args": {"width": 4, "fc_width": 16, "batch_norm": True}},
    "train": {
        "seeds": [0, 1],
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "momentum": 0.9,
        "wd": 0.0005,
        "save_epochs": [1],
    },
    "curve": {
        "endpoints": [0, 1],
        "type": "bezier",
        "num_bends": 3,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.02,
        "momentum": 0.9,
        "wd": 0.0005,
        "seed": 0,
        "init": "linear",
    },
    "eval": {
        "num_points": 3,
        "batch_size": 64,
        "bn_samples": 0,
        "train_samples": 96,
        "ensemble": "probs",
        "seed": 0,
        "align": True,
    },
    "fge": {
        "start_seeds": [0, 1],
        "start_epoch": 1,
        "epochs": 1,
        "cycle": 0.5,
        "lr_1": 0.02,
        "lr_2": 0.001,
        "batch_size": 32,
        "momentum": 0.9,
        "wd": 0.0005,
        "seed": 0,
    },
    "sse": {"epochs": 4, "cycles": 4, "lr": 0.05, "batch_size": 32, "momentum": 0.9, "wd": 0.0005, "seed": 0},
    "compare": {"budgets": [1, 2], "ensemble": "probs"},
    "plane": {
        "grid_points": 3,
        "margin": 0.2,
        "batch_size": 64,
        "bn_samples": 96,
        "train_samples": 96,
        "test_samples": 0,
        "seed": 0,
    },
    "path_ensembles": {"ensemble": "probs", "batch_size": 64, "bn_samples": 0, "seed": 0},
}


def tiny_params(**overrides) -> dict:
    """The tiny config with ``section__key=value`` (or whole ``section=...``) overrides."""
    params = copy.deepcopy(TINY)
    for key, value in overrides.items():
        if "__" not in key:
            params[key] = value
            continue
        section, name = key.split("__", 1)
        params[section][name] = value
    return params


def write_params(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def invoke(module, *args):
    """Run a stage command through Typer's CliRunner; returns the click Result."""
    return CliRunner().invoke(module.app, [str(a) for a in args], catch_exceptions=False)


def build_workspace(root: Path, steps) -> Path:
    """Run ``steps`` — (stage module, *args) — in ``root`` on the tiny config, as dvc.yaml would.

    The caller has already made ``root`` the working directory. Training stages get ``--device cpu``;
    every step must succeed.
    """
    write_params(root, tiny_params())
    for module, *args in steps:
        device = [] if module.__name__.endswith((".prepare", ".compare", ".report")) else ["--device", "cpu"]
        r = invoke(module, *args, *device)
        assert r.exit_code == 0, f"{module.__name__}: {r.output}"
    return root


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of a dvc or torchrun subprocess in a test: this venv first on PATH, the CPU, one thread."""
    return dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MODECONN_DEVICE="cpu",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        **extra,
    )


def copy_project(root: Path, names) -> None:
    """The project's files and folders ``names`` into ``root`` (without byte code)."""
    for name in names:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, root / name)


def init_repo(root: Path, run, message: str) -> None:
    """``root`` as a git repository with DVC initialised and everything in it committed; ``run(cmd, cwd)``
    runs each command and fails the test when one fails."""
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@modeconn"],
        ["git", "config", "user.name", "modeconn test"],
        [DVC, "init", "-q"],
        [DVC, "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", message],
    ):
        run(cmd, root)


def assert_same(a, b, where: str, tolerance: dict | None = None) -> None:
    """Nested dicts / lists of tensors and numbers equal leaf by leaf: exactly (bit for bit; NaN equals NaN)
    without ``tolerance``, floating-point tensors and floats within ``tolerance`` (rtol, atol) with it."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        if tolerance is not None and a.is_floating_point():
            worst = (a - b).abs().max().item() if a.numel() else 0.0
            assert torch.allclose(a, b, **tolerance), f"{where} differs by {worst:.3g}"
        else:
            assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}", tolerance)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]", tolerance)
    elif isinstance(a, float) and math.isnan(a):  # e.g. the distance of a first snapshot to none before it
        assert isinstance(b, float) and math.isnan(b), where
    elif isinstance(a, float) and tolerance is not None:
        assert math.isclose(a, b, rel_tol=tolerance["rtol"], abs_tol=tolerance["atol"]), f"{where}: {a} {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
