"""Helpers for driving the stage commands in a temporary workspace."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from .tiny import ROOT, tiny_params

DVC = str(Path(sys.executable).parent / "dvc")


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
