"""End to end: `dvc repro` of the whole pipeline in a temporary git repo on the tiny config, then
`dvc exp run -S …` runs that must rerun only the stages a key touches."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .stage_utils import DVC, copy_project, init_repo, tiny_params, tool_env, write_params

pytestmark = pytest.mark.slow

COPY = ["modeconn", "stages", "dvc.yaml", ".dvcignore"]


def run(cmd: list[str], cwd: Path) -> str:
    env = tool_env()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    copy_project(root, COPY)
    # FGE of 2 epochs from epoch 1 so that the issue's `-S fge.cycle=4` is a valid change below.
    write_params(root, tiny_params(fge__epochs=2, fge__cycle=2))
    init_repo(root, run, "tiny project")
    return root


def test_repro_then_only_changed_stages_rerun(repo):
    dvc = [DVC]
    out = run(dvc + ["repro"], repo)
    stages = ran(out)
    assert stages == {
        "params",
        "prepare",
        "train_endpoint@0",
        "train_endpoint@1",
        "fit_curve",
        "eval_curve",
        "fge",
        "sse",
        "compare",
        "plane",
        "plane_points",
        "path_ensembles",
        "barriers",
        "curvature",
        "simplex@0",
        "simplex@1",
        "triangle",
        "report",
    }
    for f in [
        "metrics/endpoints/seed_0.json",
        "metrics/endpoints/seed_1.json",
        "metrics/curve.json",
        "metrics/curve_eval.csv",
        "metrics/fge.json",
        "metrics/sse.json",
        "metrics/compare.json",
        "metrics/compare.md",
        "metrics/compare.png",
        "metrics/curve_along_t.png",
        "metrics/plane.json",
        "metrics/plane_train_loss.png",
        "metrics/plane_test_error.png",
        "data/plane/grid.pt",
        "metrics/plane_points.json",
        "metrics/plane_points_test_error.png",
        "data/plane_points/grid.pt",
        "metrics/path_ensembles.csv",
        "metrics/barriers.json",
        "metrics/barriers.csv",
        "metrics/curvature.json",
        "metrics/curvature.csv",
        "metrics/curvature_along_t.png",
        "metrics/path_ensembles.json",
        "metrics/path_ensembles.png",
        "metrics/report.md",
        "metrics/headline.json",
        "metrics/curve.run.json",
        "metrics/compare.run.json",
        "metrics/simplex/seed_1.json",
        "data/simplex/seed_1/predictions.pt",
        "metrics/triangle.json",
    ]:
        assert (repo / f).is_file(), f
    curve = json.loads((repo / "metrics/curve.json").read_text())
    assert json.loads((repo / "metrics/curve.run.json").read_text())["num_points"] == 3
    plane = json.loads((repo / "metrics/plane.json").read_text())
    assert json.loads((repo / "metrics/plane.run.json").read_text())["grid_points"] == 3
    headline = json.loads((repo / "metrics/headline.json").read_text())
    assert headline["curve_max_test_error"] == curve["curve"]["test_error"]["max"]
    compared = json.loads((repo / "metrics/compare.json").read_text())
    assert set(headline["test_error_1B"]) == set(headline["val_error_1B"]) == {"ind", "sse", "fge", "swa", "espro"}
    assert headline["test_error_1B"]["swa"] == compared["1B"]["swa"]["test_error"]
    assert plane["curve_off_plane"]["max_relative"] < 1e-5  # a 3-bend Bezier lies in the plane
    import pandas as pd

    first = pd.read_csv(repo / "metrics/path_ensembles.csv").iloc[0]
    assert first["t"] == 0 and first["curve_error"] == first["segment_error"] == first["random_error"]
    report = (repo / "metrics/report.md").read_text()
    assert "compare.png" in report and "plane_train_loss.png" in report and "plane_points_test_error.png" in report
    assert headline["plane_points_centroid_test_error"] >= 0
    assert "curvature_along_t.png" in report and headline["curvature_endpoint_top_eigenvalue"] > 0
    assert "## Simplexes of low loss" in report and 0 <= headline["triangle_interior_test_error"] <= 1

    # Nothing changed: nothing reruns.
    assert ran(run(dvc + ["repro"], repo)) == set()
    # `dvc metrics show` (and `dvc exp show`) list the headline only; each stage's JSON is a plain output.
    out = run(dvc + ["metrics", "show", "--json"], repo)
    shown = json.JSONDecoder().raw_decode(out, out.index("{"))[0][""]["data"]  # "": the workspace
    assert list(shown) == ["metrics/headline.json"], out

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)

    # A training key: everything downstream of the endpoints reruns, prepare does not.
    stages = ran(run(dvc + ["exp", "run", "-S", "train.lr=0.04"], repo))
    assert "prepare" not in stages
    assert stages == {
        "params",  # checks the whole file first; its marker is unchanged, so it reruns nothing by itself
        "train_endpoint@0",
        "train_endpoint@1",
        "fit_curve",
        "eval_curve",
        "fge",
        "compare",
        "plane",
        "plane_points",
        "path_ensembles",
        "barriers",
        "curvature",
        "simplex@0",
        "simplex@1",
        "triangle",
        "report",
    }  # not prepare; not sse (it reads model and sse, not train.lr)

    # The FGE cycle: only fge and compare (and the report that shows them).
    stages = ran(run(dvc + ["exp", "run", "-S", "fge.cycle=4"], repo))
    assert stages == {"params", "fge", "compare", "report"}

    # The number of bends: only the curve stages and what draws them.
    stages = ran(run(dvc + ["exp", "run", "-S", "curve.num_bends=4"], repo))
    assert stages == {"params", "fit_curve", "eval_curve", "plane", "path_ensembles", "barriers", "curvature", "report"}

    # The plane through three networks: only that stage (and the report).
    stages = ran(run(dvc + ["exp", "run", "-S", "plane_points.grid_points=2"], repo))
    assert stages == {"params", "plane_points", "report"}

    # The curvature's probes: only that stage (and the report).
    stages = ran(run(dvc + ["exp", "run", "-S", "curvature.probes=2"], repo))
    assert stages == {"params", "curvature", "report"}

    # The simplexes' volume weight: the simplexes, the ESPRO rows and the report; not the triangle.
    stages = ran(run(dvc + ["exp", "run", "-S", "simplex.volume_weight=0.1"], repo))
    assert stages == {"params", "simplex@0", "simplex@1", "compare", "report"}

    diff = run(dvc + ["metrics", "diff"], repo)
    assert "metrics/headline.json" in diff and "metrics/curve.json" not in diff
