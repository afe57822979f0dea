"""The tests' tiny config: the repository's params.yaml with one fixed set of overrides that shrinks it.

Every key the tests do not override is the default run's own value, so a new key in params.yaml reaches the
tests without a second copy of the schema here. ``tiny_params(**changes)`` then applies a test's own
changes on top, as ``section__key=value`` (``model__args__width=8``) or, for keys that are not Python
names, ``**{"curve.num_bends": 5}``. A change replaces the value at its key (a dict given for a section or
a sub-dict replaces it whole).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

# The shrinking: synthetic data (240 training images, 48 of them held out, 96 test, 4 classes of 1×28×28),
# a small ConvFC with BatchNorm (so every stage recalibrates BN), seeds 0 and 1, B = 2 epochs of batch 32,
# 3 points of t, a 3 × 3 plane, and a 3 × 3 plane through both endpoints and seed 0's checkpoint of epoch 1 (a
# file point: the tiny run has two seeds). Augmentation stays on so the batched crop and flip run in every training
# stage. Tests read some of these numbers (e.g. 240 − 48 = 192 training images, 2 FGE snapshots per run).
SHRINK: dict[str, Any] = {
    "data.name": "synthetic",
    "data.val_size": 48,
    "data.augment": "crop_flip",
    "data.download": False,
    "data.synthetic": {"n_train": 240, "n_test": 96, "num_classes": 4, "channels": 1, "size": 28, "seed": 0},
    "model.name": "convfc",
    "model.args": {"width": 4, "fc_width": 16, "batch_norm": True},
    "train.seeds": [0, 1],
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.save_epochs": [1],
    "curve.epochs": 2,
    "curve.batch_size": 32,
    "curve.lr": 0.02,
    "eval.num_points": 3,
    "eval.batch_size": 64,
    "eval.train_samples": 96,
    "fge.start_seeds": [0, 1],
    "fge.start_epoch": 1,
    "fge.epochs": 1,
    "fge.lr_1": 0.02,
    "fge.lr_2": 0.001,
    "fge.batch_size": 32,
    "sse.epochs": 4,
    "sse.cycles": 4,
    "sse.batch_size": 32,
    "compare.budgets": [1, 2],
    "plane.grid_points": 3,
    "plane.batch_size": 64,
    "plane.bn_samples": 96,
    "plane.train_samples": 96,
    "plane_points.points": [{"seed": 0}, {"seed": 1}, {"file": "data/endpoints/seed_0/epoch_1.pt"}],
    "plane_points.grid_points": 3,
    "plane_points.batch_size": 64,
    "plane_points.bn_samples": 96,
    "plane_points.train_samples": 96,
    "path_ensembles.batch_size": 64,
    "barriers.num_points": 3,
    "barriers.batch_size": 64,
    "barriers.bn_samples": 96,
    "barriers.train_samples": 96,
    "curvature.num_points": 3,
    "curvature.batch_size": 64,
    "curvature.bn_samples": 96,
    "curvature.train_samples": 96,
    "curvature.iters": 6,
    "curvature.probes": 3,
    "simplex.seeds": [0, 1],
    "simplex.start_epoch": 1,
    "simplex.epochs": 1,
    "simplex.lr": 0.02,
    "simplex.batch_size": 32,
    "simplex.samples": 3,
    "simplex.triangle": [0, 1],
    "simplex.eval_batch_size": 64,
    "simplex.bn_samples": 96,
    "simplex.train_samples": 96,
}


@functools.cache
def _default_text() -> str:
    return (ROOT / "params.yaml").read_text()


def set_key(params: dict, key: str, value: Any) -> None:
    """``params`` with ``value`` at ``key`` (dotted, or ``__``-separated); the sections on the way must exist."""
    *path, name = key.replace("__", ".").split(".")
    node = params
    for part in path:
        if not isinstance(node.get(part), dict):
            raise KeyError(f"tiny_params: no section {part!r} on the way to {key!r}")
        node = node[part]
    node[name] = copy.deepcopy(value)


def tiny_params(**changes: Any) -> dict:
    """params.yaml, shrunk by ``SHRINK``, then the caller's ``changes`` (a fresh dict each call)."""
    params = yaml.safe_load(_default_text())
    for key, value in {**SHRINK, **changes}.items():
        set_key(params, key, value)
    return params
