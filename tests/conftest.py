"""Shared fixtures, and how the tests are laid out.

Three tiers, cheapest first:

- Library tests (most modules): modeconn's calls on tensors, modules and loaders made in the test
  (``tiny_data``, ``loader_of``): no workspace, no params file, seconds each.
- Stage tests: a stage command through Typer's CliRunner (``stage_utils.invoke``) on the tiny config. They read
  the one ``tiny_workspace`` of the session (the pipeline run once, in dvc.yaml's order); a test may rerun
  a stage there with the same params (it writes the same files), and writes anything else (other params,
  other outputs) in its own ``tmp_path``, reading the workspace's files through ``--prepared``, ``--curve``, ...
- End-to-end tests, marked ``slow``: ``dvc repro`` in a temporary git repository, torchrun, the presets, the
  bench, a real ``kill -9``. ``make check`` (lint + ``pytest -m "not slow"``, a few minutes) leaves them out;
  ``make test`` runs everything. A test that takes more than about 15 s belongs here unless it is the only
  stage test of its feature.

The tiny config is ``tiny.tiny_params(**changes)``: the repository's params.yaml, shrunk by one fixed set of
overrides (synthetic data, B = 2 epochs, batch 32, 3 points of t, ...), then the test's own changes
(``curve__num_bends=5``). Tests read some of the shrinking's values (240 − 48 training images, two FGE snapshots
per run, ...): change one in ``tiny.SHRINK`` together with them. ``gpu`` tests are skipped (and reported) where
CUDA is absent.
"""

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
def tiny_workspace(tmp_path_factory):
    """The stages of dvc.yaml after its params check, in its order, on ``tiny_params()``, run once for the
    session: prepared data, endpoints of seeds 0 and 1, the curve and its evaluation, FGE, SSE, the plane, the
    plane through three networks, the path ensembles, the simplexes and the triangle, compare, the barrier card,
    the curvature along the paths and the report. Tests read it; one that runs a stage in it runs it with the same
    params."""
    from stages import (
        barriers,
        compare,
        curvature,
        eval_curve,
        fge,
        fit_curve,
        path_ensembles,
        plane,
        plane_points,
        prepare,
        report,
        simplex,
        sse,
        train_endpoint,
        triangle,
    )

    from .stage_utils import build_workspace

    root = tmp_path_factory.mktemp("tiny_workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        steps = [(prepare,), (train_endpoint, "--seed", 0), (train_endpoint, "--seed", 1), (fit_curve,)]
        steps += [(eval_curve,), (fge,), (sse,), (plane,), (plane_points,), (path_ensembles,)]
        for seed in (0, 1):  # as dvc.yaml's simplex@<seed>
            out = ("--out", f"data/simplex/seed_{seed}", "--metrics", f"metrics/simplex/seed_{seed}.json")
            steps += [(simplex, "--seed", seed, *out, "--table", f"metrics/simplex/seed_{seed}.csv")]
        steps += [(triangle,), (compare, "--simplex", "data/simplex")]
        steps += [(barriers, "--curve", "data/curve", "--curve-table", "metrics/curve_eval.csv"), (curvature,)]
        steps += [(report,)]
        build_workspace(root, steps)
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
