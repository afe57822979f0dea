"""The `params` stage (stages.validate): the whole params file is checked before any other stage runs, so a bad
value stops `dvc repro` before DVC deletes any stage's earlier outputs."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from stages import validate

from .stage_utils import DVC, ROOT, copy_project, init_repo, invoke, tiny_params, tool_env, write_params

N_TRAIN = 240 - 48  # the tiny config's synthetic training images after its validation split


def check(tmp_path: Path, params: dict, *args) -> tuple[int, str, Path]:
    path = write_params(tmp_path, params)
    out = tmp_path / "data" / "params.ok"
    r = invoke(validate, "--params", path, "--out", out, *args)
    return r.exit_code, r.output, out


def test_a_valid_file_gets_the_same_marker_whatever_its_values(tmp_path):
    code, output, out = check(tmp_path, tiny_params(), "--batch-sizes", "train,curve,fge,sse")
    assert code == 0, output
    first = out.read_bytes()
    code, output, out = check(tmp_path, tiny_params(fge__cycle=0.25, curve__batch_size=N_TRAIN))
    assert code == 0, output
    assert out.read_bytes() == first, "the marker must not change, else every stage would rerun"


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({**tiny_params(), "fgee": {"cycle": 4}}, "unknown section 'fgee' in "),
        (tiny_params(curve__bends=3), "unknown key curve.bends in "),
        (tiny_params(sse__momentum=1.5), "sse.momentum must be in [0, 1)"),  # a section no stage here may read
    ],
)
def test_every_section_of_the_file_is_checked(tmp_path, params, said):
    code, output, out = check(tmp_path, params)
    assert code == 1 and said in output and "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1 and not out.exists()


def test_a_missing_key_names_the_key_and_the_file(tmp_path):
    params = tiny_params()
    del params["curve"]["lr"]
    code, output, out = check(tmp_path, params)
    assert code == 1 and "missing key curve.lr in " in output and "params.yaml" in output, output
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"fge__start_files": ["checkpoints/a.pt"]}, "fge.start_files: checkpoints/a.pt not found"),
        ({"curve__endpoint_files": ["a.pt", "b.pt"]}, "curve.endpoint_files: a.pt not found"),
        ({"curve__init": "curves/old.pt"}, "curve.init: curves/old.pt not found"),
        ({"model__weights": "w.pt"}, "model.weights: w.pt not found"),
        ({"barriers__files": ["a.pt", "b.pt"]}, "barriers.files: a.pt not found"),
    ],
)
def test_a_missing_file_of_the_users_own_stops_the_params_check(tmp_path, monkeypatch, changes, said):
    monkeypatch.chdir(tmp_path)  # paths are relative to the folder the pipeline runs in
    code, output, out = check(tmp_path, tiny_params(**changes))
    assert code == 1 and said in output and "Traceback" not in output, output
    assert not out.exists()
    for file in ("a.pt", "b.pt", "w.pt", "checkpoints/a.pt", "curves/old.pt"):
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_bytes(b"")
    code, output, out = check(tmp_path, tiny_params(**changes))  # present: the params check passes
    assert code == 0, output


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"fge__start_seeds": [0, 5]}, "fge.start_seeds: seed 5 is not in train.seeds [0, 1]"),
        ({"simplex__seeds": [7]}, "simplex.seeds: seed 7 is not in train.seeds [0, 1]"),
        ({"simplex__triangle": [0, 3]}, "simplex.triangle: seed 3 is not in train.seeds [0, 1]"),
        ({"simplex__start_epoch": 3}, "simplex.start_epoch 3 is neither in train.save_epochs nor train.epochs"),
        ({"fge__start_epoch": 3}, "fge.start_epoch 3 is neither in train.save_epochs nor train.epochs"),
    ],
)
def test_the_endpoints_other_sections_start_from_must_be_trained(tmp_path, monkeypatch, changes, said):
    """A seed or start epoch that no train_endpoint makes is named by its key before any stage runs (else DVC
    would stop on a missing dependency naming a file, not the setting)."""
    code, output, out = check(tmp_path, tiny_params(**changes))
    assert code == 1 and said in output and "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1 and not out.exists()
    start_files = {"fge__start_files": ["a.pt"]} if "fge" in said else {"simplex__start_files": ["a.pt"]}
    if "triangle" not in said:  # with files of your own, the endpoint settings are not used
        monkeypatch.chdir(tmp_path)
        (tmp_path / "a.pt").write_bytes(b"")
        code, output, out = check(tmp_path, tiny_params(**changes, **start_files))
        assert code == 0, output


def test_batch_sizes_must_fit_the_training_images(tmp_path):
    big = tiny_params(curve__batch_size=100_000)
    code, output, out = check(tmp_path, big, "--batch-sizes", "train,curve,fge,sse")
    assert code == 1 and f"curve.batch_size 100000 is larger than the {N_TRAIN} training images" in output, output
    assert "params.yaml" in output and not out.exists()
    code, output, _ = check(tmp_path, big, "--batch-sizes", "train,fge")  # a pipeline that does not fit a curve
    assert code == 0, output
    code, output, _ = check(tmp_path, tiny_params(data__val_size=240), "--batch-sizes", "curve")
    assert code == 1 and "data.val_size=240 must be smaller than the 240 training images" in output, output


def test_a_named_dataset_is_sized_from_the_prepared_folder_once_made(tmp_path):
    params = tiny_params(data__name="fashion_mnist", curve__batch_size=60_000)
    del params["data"]["synthetic"]
    code, output, _ = check(tmp_path, params, "--prepared", tmp_path / "prepared", "--batch-sizes", "curve")
    assert code == 0, output  # not prepared yet: the curve stage checks it when it runs
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "meta.json").write_text(
        json.dumps({"name": "fashion_mnist", "n_train": 55_000, "n_val": 5000})
    )
    code, output, _ = check(tmp_path, params, "--prepared", tmp_path / "prepared", "--batch-sizes", "curve")
    assert code == 1 and "curve.batch_size 60000 is larger than the 59952 training images" in output, output


def test_the_width_experiments_file_and_its_subset(tmp_path):
    width = yaml.safe_load((ROOT / "experiments" / "width" / "params.yaml").read_text())
    width["data"] = tiny_params()["data"]
    width["subset"]["train_size"] = 100
    code, output, _ = check(tmp_path, width, "--batch-sizes", "train,curve")
    assert code == 1 and "train.batch_size 128 is larger than the 100 training images" in output, output
    width["subset"]["train_size"] = 0  # all 192
    code, output, _ = check(tmp_path, width, "--batch-sizes", "train,curve")
    assert code == 0, output
    width["width"]["ks"] = [1]
    code, output, _ = check(tmp_path, width)
    assert code == 1 and "width.ks must list at least two" in output, output


def test_every_pipeline_runs_it_first_on_its_whole_params_file():
    """Each dvc.yaml's `params` stage tracks its whole params file (no key list) and every other stage depends
    on its marker, so DVC runs it first and stops at its error."""
    for pipeline, params_file, marker in (
        ("dvc.yaml", "params.yaml", "data/params.ok"),
        ("own/dvc.template.yaml", "params.yaml", "data/params.ok"),
        ("experiments/width/dvc.yaml", "experiments/width/params.yaml", "experiments/width/data/params.ok"),
    ):
        stages = yaml.safe_load((ROOT / pipeline).read_text())["stages"]
        first, *others = stages
        assert first == "params", pipeline
        body = stages["params"]
        assert body["params"] == [{params_file: None}], pipeline
        assert body["outs"] == [marker] and f"--out {marker}" in body["cmd"] and "stages.validate" in body["cmd"]
        assert f"--params {params_file}" in body["cmd"], pipeline
        for name in others:
            st = stages[name].get("do", stages[name])
            assert marker in st["deps"], (pipeline, name)


# ------------------------------------------------------------------ end to end, with DVC


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *args], cwd=cwd, env=tool_env(), capture_output=True, text=True)


def _snapshot(root: Path) -> dict[str, bytes]:
    files = [*sorted((root / "data" / "curve").rglob("*")), root / "metrics" / "curve_train.json"]
    return {str(f.relative_to(root)): f.read_bytes() for f in files if f.is_file()}


@pytest.mark.slow
def test_a_bad_value_stops_dvc_repro_before_any_output_is_deleted(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_project(repo, ["modeconn", "stages", "dvc.yaml", ".dvcignore"])
    good = tiny_params()
    write_params(repo, good)

    def run(cmd, cwd):
        proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"

    init_repo(repo, run, "tiny project")
    done = _dvc(["repro", "fit_curve"], repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running stage 'params'" in done.stdout
    before = _snapshot(repo)
    assert "metrics/curve_train.json" in before and any(k.startswith("data/curve/") for k in before)

    missing = copy.deepcopy(good)
    del missing["curve"]["lr"]
    misspelt = {**copy.deepcopy(good), "fgee": {"cycle": 4}}
    for bad, said in (
        (misspelt, "unknown section 'fgee' in params.yaml"),  # first: after a failed run its marker is gone
        (tiny_params(curve__batch_size=100_000), f"curve.batch_size 100000 is larger than the {N_TRAIN} training"),
        (missing, "missing key curve.lr in params.yaml"),
    ):
        write_params(repo, bad)
        if "fgee" in bad:  # no other stage tracks the misspelt section: only `params` is changed
            status = _dvc(["status", "--json", "--with-deps", "fit_curve"], repo)
            assert set(json.loads(status.stdout)) == {"params"}, status.stdout + status.stderr
        proc = _dvc(["repro", "fit_curve"], repo)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and said in out and "Traceback" not in out, out
        assert "Running stage 'fit_curve'" not in out, out
        assert _snapshot(repo) == before, f"{said}: the curve's earlier outputs were touched"

    # Back to the valid file: `params` reruns (or comes from the run cache), its marker is the same as before,
    # so fit_curve and what it reads are up to date.
    write_params(repo, good)
    proc = _dvc(["repro", "fit_curve"], repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'params'" in proc.stdout and "Running stage 'fit_curve'" not in proc.stdout, proc.stdout
    assert _snapshot(repo) == before
