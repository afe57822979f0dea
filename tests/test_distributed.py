"""Data-parallel training stages under torchrun, on the CPU with gloo (the GPU path uses NCCL instead).

2 processes with the same global batch give the weights of 1 process (a model without BatchNorm: gloo has no
SyncBatchNorm, so there each process would normalise with its own shard's statistics), through the command
line a user types; a failing rank ends the run at once with its error; a preempted 2-process run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stages import prepare, train_endpoint

from .stage_utils import ROOT, invoke, tiny_params, write_params

pytestmark = pytest.mark.slow

NO_BN = {"name": "convfc", "args": {"width": 4, "fc_width": 16}}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MODECONN_PLAIN": "1"}
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # sums of the shards' gradients in another order than one batch's


def torchrun(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def stage_args(name: str, out: str) -> list[str]:
    """The arguments dvc.yaml passes (with --history, which torchrun's own parser lets through)."""
    return [
        "-m",
        f"stages.{name}",
        "--params",
        "params.yaml",
        "--prepared",
        "data/prepared",
        "--device",
        "cpu",
        "--out",
        f"data/{out}",
        "--metrics",
        f"metrics/{out}.json",
        "--history",
        f"metrics/{out}.csv",
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_params(root, tiny_params(model=NO_BN, train__epochs=2, curve__epochs=2))
    assert invoke(prepare).exit_code == 0
    for seed in (0, 1):  # the 1-process references
        assert invoke(train_endpoint, "--seed", seed, "--device", "cpu").exit_code == 0
    mp.undo()
    return root


def weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]


def assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.allclose(a[k], b[k], **TOLERANCE), f"{what}: {k} differs by {(a[k] - b[k]).abs().max():.3g}"


def test_two_processes_train_the_endpoint_and_the_curve_of_one(workspace):
    r = torchrun(*stage_args("train_endpoint", "ddp_seed_0"), "--seed", "0", cwd=workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stderr
    one = weights(workspace / "data/endpoints/seed_0/model.pt", "state_dict")
    assert_close(weights(workspace / "data/ddp_seed_0/model.pt", "state_dict"), one, "endpoint, 2 vs 1 process")
    m1 = json.loads((workspace / "metrics/endpoints/seed_0.json").read_text())
    m2 = json.loads((workspace / "metrics/ddp_seed_0.json").read_text())
    assert m2["test_accuracy"] == pytest.approx(m1["test_accuracy"], abs=1 / 96)
    assert json.loads((workspace / "metrics/ddp_seed_0.run.json").read_text())["processes"] == 2

    subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.fit_curve",
            "--device",
            "cpu",
            "--out",
            "data/curve_1",
            "--metrics",
            "metrics/c1.json",
            "--history",
            "metrics/c1.csv",
        ],
        cwd=workspace,
        env=ENV,
        check=True,
        capture_output=True,
    )
    r = torchrun(*stage_args("fit_curve", "curve_2"), cwd=workspace)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close(
        weights(workspace / "data/curve_2/curve.pt", "control_points"),
        weights(workspace / "data/curve_1/curve.pt", "control_points"),
        "curve, 2 vs 1 process",
    )


def test_a_failing_rank_ends_the_run_with_its_error_and_writes_nothing(workspace):
    env = {**ENV, "MODECONN_FAULT_RANK": "1", "MODECONN_NPROC": "2"}
    start = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.train_endpoint",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--out",
            "data/failed",
            "--metrics",
            "metrics/failed.json",
            "--history",
            "metrics/failed.csv",
        ],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert r.returncode != 0
    assert "fault injected on rank 1" in r.stderr and "2-process run of stages.train_endpoint failed" in r.stderr
    assert seconds < 60, f"the other rank was left hanging ({seconds:.0f} s)"
    assert not (workspace / "data/failed").exists() and not (workspace / "metrics/failed.json").exists()


def test_a_preempted_two_process_run_resumes(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns(".modeconn"))
    args = (*stage_args("train_endpoint", "resumed"), "--seed", "1")
    r = torchrun(*args, cwd=ws, env={**ENV, "MODECONN_STOP_AFTER_EPOCHS": "1"})
    assert r.returncode != 0 and "rerun the same command" in r.stderr
    assert not (ws / "data/resumed").exists()
    r = torchrun(*args, cwd=ws)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((ws / "metrics/resumed.run.json").read_text())["resumed_after_epoch"] == 1
    assert_close(
        weights(ws / "data/resumed/model.pt", "state_dict"),
        weights(ws / "data/endpoints/seed_1/model.pt", "state_dict"),
        "resumed 2-process vs 1-process",
    )
