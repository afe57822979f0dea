"""What a person reads of the pipelines, and what a fresh clone runs.

`dvc exp show` and `dvc metrics diff` list every number of every file declared `metrics:` in every dvc.yaml DVC
finds in the repository. Each pipeline declares one small headline file (the root's report writes
metrics/headline.json, the width experiment's and own/'s `headline` stage theirs); every other stage JSON is a
plain output. With every pipeline's files present (the committed metrics/ and experiments/width/, own/ as a
user makes it), `dvc exp show` lists at most a screen of metric columns.

own/ ships a template (own/dvc.template.yaml) that a user copies to own/dvc.yaml: its prepare stage needs the
user's images, so a pipeline there would stop `dvc repro -P` on a fresh clone. On a fresh clone, every
dependency of every stage DVC collects is in the clone or made by a stage (`dvc repro -P --dry` cannot say so:
it stops at the first stage's output that a dry run does not make).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .stage_utils import DVC, ROOT, tool_env
from .test_pipeline import run

MAX_COLUMNS = 60  # what `dvc exp show` fits on a wide screen beside the params that changed
EXPERIMENTS = ("experiments/width", "experiments/bn", "experiments/instability")
PIPELINES = ("dvc.yaml", *(f"{e}/dvc.yaml" for e in EXPERIMENTS), "own/dvc.template.yaml")
TEMPLATE = ROOT / "own/dvc.template.yaml"
HEADLINES = {"metrics/headline.json", *(f"{e}/metrics/headline.json" for e in EXPERIMENTS), "own/metrics/headline.json"}


def _entries(body: dict, key: str) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in body.get(key, [])]


def test_each_pipeline_declares_its_headline_as_its_only_metrics():
    """Every other JSON a stage writes is a plain output (cache: false, in git), not a metric."""
    for pipeline in PIPELINES:
        declared = []
        for name, stage in yaml.safe_load((ROOT / pipeline).read_text())["stages"].items():
            body = stage.get("do", stage)
            declared += [(name, m) for m in _entries(body, "metrics")]
            for entry in body.get("outs", []):
                path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                if str(path).startswith(("metrics/", "experiments/width/metrics/", "experiments/width/runs/")):
                    assert opts.get("cache") is False, (pipeline, name, path)  # in git, as metrics were
        assert [m for _, m in declared] == [m for _, m in declared if m.endswith("metrics/headline.json")]
        assert len(declared) == 1, (pipeline, declared)


def test_own_ships_a_template_not_a_pipeline():
    """DVC collects every dvc.yaml in the repository: own/dvc.yaml is the user's copy, never in the project."""
    assert TEMPLATE.is_file() and "own/dvc.yaml" not in _tracked("own")


def _tracked(path: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", path], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def fresh_clone(dest: Path) -> Path:
    """What a clone of the working tree holds once committed: the tracked files and the new ones git does not
    ignore (none of the data DVC caches, no run left in own/), as a git repository with one commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file() and "__pycache__" not in src.parts:  # a tracked file deleted in the tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    _commit(dest, "a clone", init=True)
    return dest


def _commit(repo: Path, message: str, init: bool = False) -> None:
    cmds = [["git", "init", "-q"], ["git", "config", "user.email", "t@modeconn"], ["git", "config", "user.name", "t"]]
    for cmd in [*(cmds if init else []), ["git", "add", "-A"], ["git", "commit", "-qm", message]]:
        run(cmd, repo)


def _run_headline(repo: Path, pipeline: str) -> None:
    """The pipeline's headline stage, by its own command (as `dvc repro` runs it)."""
    stage = yaml.safe_load((repo / pipeline).read_text())["stages"]["headline"]
    cwd = (repo / pipeline).parent / stage.get("wdir", ".")
    proc = subprocess.run(stage["cmd"], shell=True, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _metric_columns(repo: Path) -> dict[str, int]:
    """The metric columns `dvc exp show` lists, per file (DVC flattens each file's nested keys into columns)."""
    from dvc.utils.flatten import flatten

    proc = subprocess.run([DVC, "exp", "show", "--json"], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)[0]["data"]["metrics"]
    missing = {path: f["error"] for path, f in files.items() if "data" not in f}
    assert not missing, f"metrics files `dvc exp show` could not read: {missing}"
    return {path: len(flatten(f["data"])) for path, f in files.items()}


@pytest.mark.slow
def test_exp_show_lists_a_screen_of_metrics_with_every_pipeline_present(tmp_path):
    repo = fresh_clone(tmp_path / "repo")
    # own/ as a user has it after a run: the template copied (README), the stages' files (the root's same
    # stages' files stand in for them), and its headline written by its own command.
    shutil.copy(repo / "own/dvc.template.yaml", repo / "own/dvc.yaml")
    (repo / "own/metrics").mkdir()
    (repo / "own/metrics/simplex").mkdir()
    for name in ("curve_train.json", "curve.json", "fge.json", "barriers.json", "simplex/seed_0.json"):
        shutil.copy(repo / "metrics" / name, repo / "own/metrics" / name)
    for pipeline in ("experiments/width/dvc.yaml", "own/dvc.yaml"):
        _run_headline(repo, pipeline)
    _commit(repo, "own/ and every headline")

    columns = _metric_columns(repo)
    assert set(columns) == HEADLINES, sorted(columns)
    assert sum(columns.values()) <= MAX_COLUMNS, columns

    # A one-knob experiment changes at most every headline number: `dvc metrics diff` lists that many rows.
    for path in HEADLINES:
        numbers = json.loads((repo / path).read_text())
        (repo / path).write_text(json.dumps(_nudged(numbers)))
    proc = subprocess.run([DVC, "metrics", "diff", "--json"], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = sum(len(v) for v in json.loads(proc.stdout).values())  # {file: {metric: {old, new, diff}}}
    assert 0 < rows <= MAX_COLUMNS, rows


def _nudged(obj):
    if isinstance(obj, dict):
        return {k: _nudged(v) for k, v in obj.items()}
    return obj + 1 if isinstance(obj, (int, float)) else obj


@pytest.mark.slow
def test_a_fresh_clone_has_every_input_dvc_repro_P_needs(tmp_path):
    """Every dependency of every stage of every dvc.yaml DVC collects is in the clone (code, params, the user's
    .dvc-tracked files) or is, holds or lies in an output of a stage; own/'s template is not collected."""
    from dvc.repo import Repo

    repo = fresh_clone(tmp_path / "repo")
    with Repo(str(repo)) as dvc_repo:
        stages = list(dvc_repo.index.stages)
        outs = [Path(o.fs_path) for s in stages for o in s.outs]
        assert outs and not [s for s in stages if Path(s.path).parent == repo / "own"]
        unmade = [
            (f"{Path(s.path).relative_to(repo)}:{s.name}", str(Path(d.fs_path).relative_to(repo)))
            for s in stages
            for d in s.deps
            if not Path(d.fs_path).exists()
            and not any(
                o == Path(d.fs_path) or o in Path(d.fs_path).parents or Path(d.fs_path) in o.parents for o in outs
            )
        ]
    assert not unmade, f"inputs no stage makes and a fresh clone lacks: {unmade}"
