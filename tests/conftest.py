"""Shared fixtures: tiny synthetic data and small models, all made in the test process."""

from __future__ import annotations

import pytest
import torch

# Tiny workloads run faster on one thread, and two test processes on 2 cores don't oversubscribe.
torch.set_num_threads(1)

from modeconn.data import DATASETS, Loader, Prepared, make_synthetic  # noqa: E402


@pytest.fixture
def tiny_data():
    """A tiny 1×12×12, 3-class synthetic dataset (train 96, test 48) as a Prepared."""
    train, test = make_synthetic(n_train=96, n_test=48, num_classes=3, channels=1, size=12, seed=0)
    info = DATASETS["synthetic"]
    import dataclasses

    info = dataclasses.replace(info, num_classes=3, channels=1, size=12)
    return Prepared(info=info, train=train, test=test, val=None)


@pytest.fixture(scope="session")
def curve_eval_workspace(tmp_path_factory):
    """prepare, two endpoints, a curve and its evaluation on the tiny config, built once for the session
    (tests read it; those that run a stage in it run it with the same params, so it stays as built)."""
    from stages import eval_curve, fit_curve, prepare, train_endpoint

    from .stage_utils import build_workspace

    root = tmp_path_factory.mktemp("curve_eval_ws")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    build_workspace(
        root, [(prepare,), (train_endpoint, "--seed", 0), (train_endpoint, "--seed", 1), (fit_curve,), (eval_curve,)]
    )
    mp.undo()
    return root


@pytest.fixture
def loader_of():
    def make(split, info, batch_size=32, train=False, **kw):
        return Loader(split, info, batch_size, train=train, **kw)

    return make


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
