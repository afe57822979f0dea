"""Resume after preemption: a stage killed mid-run continues from its last saved epoch and, on a CPU, ends
bit for bit where an uninterrupted run ends. A real ``kill -9`` of a stage subprocess, and the drill
(MODECONN_STOP_AFTER_EPOCHS) that stops each training stage after every epoch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from modeconn.io import load_checkpoint
from modeconn.resume import STOP_ENV, what_changed
from stages import fge, fit_curve, prepare, sse, train_endpoint
from stages.kit.launch import PREEMPTED_EXIT

from .stage_utils import ROOT, assert_same, copy_project, invoke, tiny_params, write_params

TIMINGS = ("seconds", "images_per_s")  # the only columns allowed to differ between two runs
# Three epochs per training stage, so that a run can be stopped between epochs and resumed.
LONGER = dict(train__epochs=3, curve__epochs=3, fge__epochs=2, fge__start_epoch=1, sse__epochs=3, sse__cycles=3)
PARAMS = tiny_params(**LONGER)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Prepared data and two endpoints of the config above."""
    root = tmp_path_factory.mktemp("resume_base")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_params(root, PARAMS)
    assert invoke(prepare).exit_code == 0
    for seed in (0, 1):
        assert invoke(train_endpoint, "--seed", seed, "--device", "cpu").exit_code == 0
    mp.undo()
    return root


def copy_of(base: Path, to: Path) -> Path:
    shutil.copytree(base, to)
    shutil.rmtree(to / "metrics", ignore_errors=True)
    return to


def same_outputs(a: Path, b: Path, files: list[str], metrics: list[str], tables: list[str]) -> None:
    for f in files:
        assert_same(torch.load(a / f, weights_only=True), torch.load(b / f, weights_only=True), f)
    for m in metrics:
        assert json.loads((a / m).read_text()) == json.loads((b / m).read_text()), m
    for t in tables:
        ta, tb = (pd.read_csv(x / t) for x in (a, b))
        keep = [c for c in ta.columns if c not in TIMINGS]
        pd.testing.assert_frame_equal(ta[keep], tb[keep], check_exact=True, obj=t)


STAGES = {  # stage → (module, args, output files, metrics, tables, epochs)
    "train_endpoint": (
        train_endpoint,
        ("--seed", 0),
        [
            "data/endpoints/seed_0/model.pt",
            "data/endpoints/seed_0/epoch_1.pt",
            "data/endpoints/seed_0/test_logprobs.pt",
            "data/endpoints/seed_0/val_logprobs.pt",
        ],
        ["metrics/endpoints/seed_0.json"],
        ["metrics/endpoints/seed_0.csv"],
        3,
    ),
    "fit_curve": (fit_curve, (), ["data/curve/curve.pt"], ["metrics/curve_train.json"], ["metrics/curve_train.csv"], 3),
    "fge": (fge, (), ["data/fge/snapshots.pt"], ["metrics/fge.json"], ["metrics/fge.csv"], 4),  # 2 runs × 2 epochs
    "sse": (sse, (), ["data/sse/snapshots.pt"], ["metrics/sse.json"], ["metrics/sse.csv"], 3),
}


@pytest.mark.parametrize("stage", STAGES)
def test_preempted_after_every_epoch_ends_where_an_uninterrupted_run_ends(stage, base, tmp_path, monkeypatch):
    module, args, files, metrics, tables, epochs = STAGES[stage]
    whole, pieces = copy_of(base, tmp_path / "whole"), copy_of(base, tmp_path / "pieces")
    monkeypatch.chdir(whole)
    assert invoke(module, *args, "--device", "cpu").exit_code == 0
    monkeypatch.chdir(pieces)
    monkeypatch.setenv("MODECONN_STOP_AFTER_EPOCHS", "1")
    codes = []
    for _ in range(epochs + 1):
        r = invoke(module, *args, "--device", "cpu")
        codes.append(r.exit_code)
        if r.exit_code == 0:
            break
        assert r.exit_code == PREEMPTED_EXIT and "rerun the same command" in r.output, r.output
        assert not (pieces / metrics[0]).exists(), "outputs written before the run finished"
    assert codes == [PREEMPTED_EXIT] * epochs + [0]  # one epoch per process; the last one only writes
    run = json.loads((pieces / metrics[0].replace(".json", ".run.json")).read_text())
    assert run["resumed_after_epoch"] == epochs
    same_outputs(whole, pieces, files, metrics, tables)
    assert not list((pieces / ".modeconn/resume").rglob("*.pt")), "a finished stage left its resume state behind"


def test_a_corrupt_state_is_ignored_and_state_of_other_params_is_removed(base, tmp_path, monkeypatch):
    ws = copy_of(base, tmp_path / "ws")
    monkeypatch.chdir(ws)
    monkeypatch.setenv("MODECONN_STOP_AFTER_EPOCHS", "1")
    assert invoke(fit_curve, "--device", "cpu").exit_code == PREEMPTED_EXIT
    (state,) = (ws / ".modeconn/resume/fit_curve").glob("*.pt")
    state.write_bytes(state.read_bytes()[:100])  # truncated, as by a crash of the file system
    monkeypatch.delenv("MODECONN_STOP_AFTER_EPOCHS")
    r = invoke(fit_curve, "--device", "cpu")
    assert r.exit_code == 0 and "ignoring resume state" in r.output and "Traceback" not in r.output
    assert json.loads((ws / "metrics/curve_train.run.json").read_text())["resumed_after_epoch"] == 0

    monkeypatch.setenv("MODECONN_STOP_AFTER_EPOCHS", "1")
    assert invoke(fit_curve, "--device", "cpu").exit_code == PREEMPTED_EXIT
    (old,) = (ws / ".modeconn/resume/fit_curve").glob("*.pt")
    write_params(ws, tiny_params(**LONGER, curve__lr=0.03))  # other settings: another run
    r = invoke(fit_curve, "--device", "cpu")
    assert r.exit_code == PREEMPTED_EXIT
    assert "saved under other settings (curve.lr changed); starting from scratch" in r.output, r.output
    (new,) = (ws / ".modeconn/resume/fit_curve").glob("*.pt")
    assert new != old and not old.exists()
    assert torch.load(new, weights_only=True)["epoch"] == 1  # started from scratch


@pytest.mark.slow  # two 40-epoch training subprocesses, one killed and rerun: about a minute
def test_kill_9_then_rerun_trains_only_the_missing_epochs(tmp_path):
    """A real SIGKILL of a training subprocess in the middle of its run; the rerun continues from the last
    saved epoch (fewer epochs trained) and its checkpoint equals that of an uninterrupted run bit for bit."""
    params = tiny_params(
        train__epochs=40,
        train__save_epochs=[20],
        data__synthetic__n_train=1200,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MODECONN_PLAIN": "1"}
    cmd = [sys.executable, "-m", "stages.train_endpoint", "--seed", "0", "--device", "cpu"]
    runs = {}
    for name in ("whole", "killed"):
        ws = tmp_path / name
        ws.mkdir()
        write_params(ws, params)
        subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=ws, env=env, check=True, capture_output=True)
        runs[name] = ws
    subprocess.run(cmd, cwd=runs["whole"], env=env, check=True, capture_output=True)

    ws = runs["killed"]
    proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder, killed_after, deadline = ws / ".modeconn/resume/train_endpoint/seed_0", 0, time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        states = list(folder.glob("*.pt"))
        if states:
            try:
                killed_after = int(torch.load(states[0], weights_only=True)["epoch"])
            except Exception:  # replaced while we read it
                killed_after = 0
            if killed_after >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert not (ws / "data/endpoints/seed_0/model.pt").exists()

    rerun = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads((ws / "metrics/endpoints/seed_0.run.json").read_text())["resumed_after_epoch"]
    assert resumed >= killed_after >= 3 and f"resuming after epoch {resumed}" in rerun.stderr
    assert f"train_endpoint seed 0 1/{40 - resumed}" in rerun.stderr  # it trained only the missing epochs
    same_outputs(
        runs["whole"],
        ws,
        ["data/endpoints/seed_0/model.pt", "data/endpoints/seed_0/epoch_20.pt"],
        ["metrics/endpoints/seed_0.json"],
        ["metrics/endpoints/seed_0.csv"],
    )
    assert not folder.exists()


def tamper_module(state: dict) -> None:
    name = next(k for k, v in state["module"].items() if v.dim() == 4)
    state["module"][name] = torch.zeros(2, 2, 2, 2)  # a conv weight of another shape


def tamper_momentum(state: dict) -> None:
    buffers = state["optimizer"]["state"]
    buffers[0]["momentum_buffer"] = torch.zeros(3)  # momentum of another shape (load_state_dict takes it)


def drop_rows(state: dict) -> None:
    del state["rows"]  # a key the stage reads after restore


@pytest.mark.parametrize("tamper", [tamper_module, tamper_momentum, drop_rows])
def test_a_state_of_another_version_is_ignored_with_a_warning(tamper, base, tmp_path, monkeypatch):
    """Right format, key and epoch, wrong content (as from another code version): one warning, the file
    deleted, and the stage trains from scratch — ending exactly where an uninterrupted run ends."""
    ws = copy_of(base, tmp_path / "ws")
    monkeypatch.chdir(ws)
    monkeypatch.setenv("MODECONN_STOP_AFTER_EPOCHS", "1")
    assert invoke(train_endpoint, "--seed", 0, "--device", "cpu").exit_code == PREEMPTED_EXIT
    (path,) = (ws / ".modeconn/resume/train_endpoint/seed_0").glob("*.pt")
    state = torch.load(path, weights_only=True)
    tamper(state)
    torch.save(state, path)
    monkeypatch.delenv("MODECONN_STOP_AFTER_EPOCHS")
    r = invoke(train_endpoint, "--seed", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if "ignoring resume state" in line]
    assert len(warnings) == 1 and "starting from scratch" in warnings[0] and "Traceback" not in r.output, r.output
    assert json.loads((ws / "metrics/endpoints/seed_0.run.json").read_text())["resumed_after_epoch"] == 0
    assert f"train_endpoint seed 0 1/{PARAMS['train']['epochs']}" in r.output  # every epoch trained again
    same_outputs(base, ws, ["data/endpoints/seed_0/model.pt"], [], ["metrics/endpoints/seed_0.csv"])
    assert not path.exists()


# ------------------------------------------------------------------ the key covers code and weights (decision 10)


def assert_started_over(ws, output: str, cause: str, not_causes: tuple[str, ...]) -> None:
    """train_endpoint seed 0 trained from epoch 1 and said why in one line, naming ``cause`` and nothing else."""
    assert json.loads((ws / "metrics/endpoints/seed_0.run.json").read_text())["resumed_after_epoch"] == 0
    assert f"train_endpoint seed 0 1/{PARAMS['train']['epochs']}" in output  # epoch 1 trained again
    why = [line for line in output.splitlines() if "resume state" in line]
    assert len(why) == 1, output
    assert cause in why[0] and "starting from scratch" in why[0], why[0]
    assert not any(other in why[0].split("saved under")[1] for other in not_causes), why[0]


def test_a_state_saved_under_other_code_starts_over_and_says_why(base, tmp_path):
    """Stopped after one epoch; then a library file the stage runs changes (as when DVC reruns a stage because its
    code changed): the rerun must not continue the old code's epochs, and names the changed file in one line."""
    ws = copy_of(base, tmp_path / "ws")
    copy_project(ws, ["modeconn", "stages"])  # the code `python -m` runs from ws (before the installed copy)
    env = {**os.environ, "PYTHONPATH": str(ws), "OMP_NUM_THREADS": "1", "MODECONN_PLAIN": "1"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "stages.train_endpoint", "--seed", "0", "--device", "cpu"]
    stopped = subprocess.run(cmd, cwd=ws, env={**env, STOP_ENV: "1"}, capture_output=True, text=True)
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr
    with open(ws / "modeconn/train.py", "a") as f:
        f.write("# a change of the code that trains\n")
    rerun = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert_started_over(ws, rerun.stderr, "other code (modeconn/train.py changed)", ("settings", "inputs"))


def test_a_state_started_from_other_weights_starts_over_and_says_why(base, tmp_path, monkeypatch):
    """model.weights names the same file, whose content is swapped after one epoch: the run started from the old
    weights must not be continued; the rerun says in one line that model.weights changed."""
    ws = copy_of(base, tmp_path / "ws")
    monkeypatch.chdir(ws)
    (ws / "own").mkdir()
    endpoint = {s: load_checkpoint(ws / f"data/endpoints/seed_{s}/model.pt")["state_dict"] for s in (0, 1)}
    torch.save(endpoint[1], ws / "own/start.pt")
    write_params(ws, tiny_params(**LONGER, model__weights="own/start.pt"))
    monkeypatch.setenv(STOP_ENV, "1")
    assert invoke(train_endpoint, "--seed", 0, "--device", "cpu").exit_code == PREEMPTED_EXIT
    torch.save(endpoint[0], ws / "own/start.pt")  # the same name, other weights
    monkeypatch.delenv(STOP_ENV)
    r = invoke(train_endpoint, "--seed", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert_started_over(ws, r.output, "other inputs (model.weights changed)", ("code", "settings"))


def test_what_changed_names_settings_inputs_and_code():
    code = {f"modeconn/m{i}.py": "a" for i in range(5)}
    old = {"settings": {"curve": {"lr": 0.1, "epochs": 2}, "seed": 0}, "inputs": {"model.weights": "x"}, "code": code}
    assert what_changed(old, old) == "another resume format"
    new = {**old, "settings": {"curve": {"lr": 0.2, "epochs": 2}, "seed": 0}}
    assert what_changed(old, new) == "other settings (curve.lr changed)"
    new = {**old, "inputs": {"model.weights": "y"}, "code": {**code, "modeconn/m1.py": "b"}}
    assert what_changed(old, new) == "other inputs (model.weights changed) and other code (modeconn/m1.py changed)"
    new = {**old, "code": {k: "b" for k in code}}
    assert what_changed(old, new) == ("other code (modeconn/m0.py, modeconn/m1.py, modeconn/m2.py and 2 more changed)")
    assert "does not record" in what_changed(None, old)


def test_the_key_covers_the_torch_that_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MODECONN_RESUME_DIR", str(tmp_path))
    from modeconn.runtime import CPU
    from stages.kit.resume_key import package_versions, resume_state

    assert torch.__version__.startswith(package_versions()["package torch"])
    state = resume_state("run", CPU, {"seed": 0})
    assert state.parts["code"]["package torch"] == package_versions()["package torch"]
    real = package_versions()
    monkeypatch.setattr("stages.kit.resume_key.package_versions", lambda: {**real, "package torch": "0.0.1"})
    other = resume_state("run", CPU, {"seed": 0})
    assert other.key != state.key
    assert what_changed(state.parts, other.parts) == "other code (package torch changed)"


def test_the_key_covers_the_cpu_thread_count(tmp_path, monkeypatch):
    """One thread and two round differently on a CPU: a state saved under one is not continued under the other."""
    monkeypatch.setenv("MODECONN_RESUME_DIR", str(tmp_path))
    from modeconn.runtime import CPU
    from stages.kit.resume_key import resume_state

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = resume_state("run", CPU, {"seed": 0})
        torch.set_num_threads(2)
        two = resume_state("run", CPU, {"seed": 0})
    finally:
        torch.set_num_threads(before)
    assert one.key != two.key
    assert what_changed(one.parts, two.parts) == "other settings (runtime.threads changed)"


def test_another_process_counts_state_is_recognised_whatever_its_threads():
    from stages.kit.resume_key import same_run_but_threads

    parts = {"settings": {"seed": 0, "runtime": {"device": "cpu", "threads": 2, "processes": 2}}, "code": {"a": "1"}}
    one_thread = {**parts, "settings": {**parts["settings"], "runtime": {**parts["settings"]["runtime"], "threads": 1}}}
    assert same_run_but_threads(one_thread, parts)
    assert not same_run_but_threads({**one_thread, "code": {"a": "2"}}, parts)
    assert not same_run_but_threads(None, parts) and not same_run_but_threads({"format": 1}, parts)
