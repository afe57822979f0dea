"""End to end, data-parallel: `dvc repro` of the training stages with MODECONN_NPROC=2 writes what it writes with 1.

Two copies of one temporary git repo on the tiny config (a model without BatchNorm, batch sizes divisible by 2)
run `dvc repro fit_curve fge sse` — prepare, both endpoints, the curve, FGE and SSE — once with
MODECONN_NPROC=1 and once with MODECONN_NPROC=2 (each training stage then starts torchrun on itself). The
endpoint weights, the curve's bends, the FGE/SSE snapshot predictions and every number of the metrics JSONs
agree within ``TOLERANCE``: the two processes sum their shards' gradients in another order than one process
sums one batch's, so the runs agree to float precision, not bit for bit.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from .stage_utils import DVC, assert_same, copy_project, init_repo, tiny_params, tool_env, write_params

pytestmark = pytest.mark.slow

COPY = ["modeconn", "stages", "dvc.yaml", ".dvcignore"]
NO_BN = {"name": "convfc", "args": {"width": 4, "fc_width": 16}}
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # float32 sums in another order, over a few epochs
TRAINING = {"train_endpoint@0", "train_endpoint@1", "fit_curve", "fge", "sse"}


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    environ = tool_env(MODECONN_PLAIN="1", **env)
    return subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{out[-6000:]}"
    return out


def run(cmd: list[str], cwd: Path, **env: str) -> str:
    return finish(start(cmd, cwd, **env))


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> tuple[Path, Path]:
    one = tmp_path_factory.mktemp("nproc1") / "repo"
    one.mkdir()
    copy_project(one, COPY)
    write_params(one, tiny_params(model=NO_BN))
    init_repo(one, run, "tiny project")
    run([DVC, "repro", "prepare"], one)
    two = tmp_path_factory.mktemp("nproc2") / "repo"
    shutil.copytree(one, two, symlinks=True)
    return one, two


def numbers(obj, prefix: str = "") -> dict[str, float]:
    """The scalar leaves of a metrics JSON by their dotted path."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in numbers(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def assert_close(a, b, what: str) -> None:
    """Tensors (weights, log-probabilities) and floats within TOLERANCE; everything else (labels, names) equal."""
    assert_same(a, b, what, TOLERANCE)


def test_two_process_repro_writes_the_outputs_of_one(repos):
    one, two = repos
    # Side by side (the 1-process run takes one core, the 2-process run two), to keep the test short.
    runs = [start([DVC, "repro", "fit_curve", "fge", "sse"], repo, MODECONN_NPROC=n) for repo, n in zip(repos, "12")]
    out1, out2 = map(finish, runs)
    for out in (out1, out2):
        assert set(re.findall(r"Running stage '([^']+)'", out)) == TRAINING
    assert "starting 2 processes" in out2 and "starting 2 processes" not in out1

    for path, key in [
        ("data/endpoints/seed_0/model.pt", "state_dict"),
        ("data/endpoints/seed_1/model.pt", "state_dict"),
        ("data/curve/curve.pt", "control_points"),
        ("data/fge/snapshots.pt", "runs"),
        ("data/sse/snapshots.pt", "runs"),
    ]:
        a, b = (torch.load(repo / path, weights_only=True) for repo in (one, two))
        assert_close(a[key], b[key], f"{path} {key}, 1 vs 2 processes")
        if "snapshots" in path:
            assert_close(a["labels"], b["labels"], f"{path} labels")

    metrics = ["endpoints/seed_0.json", "endpoints/seed_1.json", "curve_train.json", "fge.json", "sse.json"]
    for name in metrics:
        a, b = (numbers(json.loads((repo / "metrics" / name).read_text())) for repo in (one, two))
        assert a.keys() == b.keys(), name
        for k in a:
            assert_close(a[k], b[k], f"metrics/{name} {k}, 1 vs 2 processes")
        run_info = [json.loads((repo / "metrics" / name.replace(".json", ".run.json")).read_text()) for repo in repos]
        assert [r["processes"] for r in run_info] == [1, 2], name
