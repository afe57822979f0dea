"""Data-parallel training stages under torchrun, on the CPU with gloo (the GPU path uses NCCL instead).

2 processes with the same global batch give the weights of 1 process (a model without BatchNorm: gloo has no
SyncBatchNorm, so there each process would normalise with its own shard's statistics), through the command
line a user types; a failing rank (raising at start or mid-epoch, or killed) ends the run at once with its error
and writes nothing; a preempted 2-process run resumes, also after a run with another process count. With
dropout (DESIGN decision 9) each rank draws its own masks while t, the batch order and the augmentation agree
with one process, no buffer is sent at a step, and a preempted 2-process run continues each rank's own dropout
stream, ending bit for bit where an uninterrupted one ends. The fast tests check that every stage option gets
past torchrun's own parser, the fault drill, the batch split, and which random states each rank resumes with.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from torch.distributed import run as torchrun_cli

from modeconn.data import DATASETS, Loader, make_synthetic
from modeconn.errors import ConfigError, ModeconnError
from modeconn.resume import ResumeState, StaleState, capture, global_rng_state, restore, set_rng_state
from modeconn.runtime import Runtime, seed_everything
from stages import prepare, train_endpoint
from stages.kit import cli, launch, resume_key

from .stage_utils import ROOT, assert_same, invoke, tiny_params, write_params

slow = pytest.mark.slow

NO_BN = {"name": "convfc", "args": {"width": 4, "fc_width": 16}}
DROPOUT = {"name": "wideresnet", "args": {"depth": 10, "widen_factor": 1, "dropout": 0.5}}  # WRN-10-1
WORKER = Path(__file__).with_name("ddp_dropout_worker.py")
TIMINGS = ("seconds", "images_per_s")  # the only columns two runs may differ in
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


STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")


def stage_options(name: str) -> list[str]:
    """Every option string (long and short forms) of stage command ``name``."""
    module = importlib.import_module(f"stages.{name}")
    if not isinstance(getattr(module, "app", None), typer.Typer):
        return []
    command = typer.main.get_command(module.app)
    return [opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")]


def test_every_stage_option_passes_through_torchruns_own_parser():
    checked = 0
    for name in STAGES:
        for opt in stage_options(name):
            argv = ["--standalone", "--nproc-per-node", "2", "-m", f"stages.{name}", opt, "x"]
            try:
                args = torchrun_cli.parse_args(argv)
            except SystemExit:
                pytest.fail(f"torchrun's parser takes {opt} of stages.{name} for one of its own")
            assert args.training_script == f"stages.{name}" and args.training_script_args == [opt, "x"], opt
            assert args.nproc_per_node == "2" and args.module, opt
            checked += 1
    assert checked > 50  # the stages were found
    with pytest.raises(SystemExit):  # what the check catches: the former --log was ambiguous
        torchrun_cli.parse_args(["--standalone", "-m", "stages.fit_curve", "--log", "x"])


def test_a_batch_that_does_not_split_over_the_processes_is_a_clear_error():
    train, _ = make_synthetic(n_train=64, n_test=8, seed=0)
    info = DATASETS["synthetic"]
    with pytest.raises(ConfigError, match="batch_size 31 cannot be split evenly over 2 processes"):
        Loader(train, info, 31, train=True, drop_last=True, shard=(0, 2))
    with pytest.raises(ConfigError, match="divisible"):  # a partial last batch would not split either
        Loader(train, info, 32, train=True, drop_last=False, shard=(1, 2))
    first = [x for x, _ in Loader(train, info, 32, train=True, drop_last=True, shard=(0, 2))]
    assert all(x.shape[0] == 16 for x in first)


def test_the_fault_drill_takes_a_rank_and_an_iteration(monkeypatch):
    rank1 = Runtime(world_size=2, rank=1)
    for value, step0, step1 in (("", None, None), ("1", None, 0), ("1:5", None, 5), ("0:2", 2, None)):
        monkeypatch.setenv(launch.FAULT_ENV, value)
        assert launch.fault_step(Runtime(world_size=2, rank=0)) == step0, value
        assert launch.fault_step(rank1) == step1, value
    for bad in ("one", "1:x", "1:", "-1"):
        monkeypatch.setenv(launch.FAULT_ENV, bad)
        if bad == "1:":  # an empty iteration is the start
            assert launch.fault_step(rank1) == 0
            continue
        with pytest.raises(ConfigError, match=launch.FAULT_ENV):
            launch.fault_step(rank1)
    batches = launch.FaultyBatches(list(range(3)), rank=1, step=5)  # raises at the 5th batch drawn: epoch 2
    assert list(batches) == [0, 1, 2] and len(batches) == 3
    with pytest.raises(ModeconnError, match="fault injected on rank 1 at training step 5"):
        list(batches)


def test_the_launcher_names_the_rank_of_torchruns_root_cause():
    text = "rank 0 ...\nRoot Cause (first observed failure):\n[0]:\n  rank      : 1 (local_rank: 1)\n"
    assert launch.failed_rank(text + "  exitcode  : -9 (pid: 42)\n") == ": rank 1 was killed by SIGKILL first"
    assert launch.failed_rank(text + "  exitcode  : 1 (pid: 42)\n") == ": rank 1 exited with code 1 first"
    assert launch.failed_rank("no summary") == ""


def test_the_launcher_tells_a_preemption_from_a_failure():
    def report(*exits: tuple[int, int]) -> str:
        rows = [
            f"[{i}]:\n  rank      : {r} (local_rank: {r})\n  exitcode  : {c} (pid: 4{i})\n"
            for i, (r, c) in enumerate(exits)
        ]
        head = "E0 api.py:1] failed (exitcode: 75) local_rank: 1 (pid: 1)\nFailures:\n"
        return head + "".join(rows[1:]) + "Root Cause (first observed failure):\n" + rows[0]

    assert launch.preempted(report((0, 75), (1, 75))) and launch.preempted(report((1, 75), (0, 75)))
    assert launch.preempted(report((0, 75), (1, -15)))  # rank 1 ended by torchrun's SIGTERM
    assert launch.preempted(report((1, 75), (0, -15)))
    assert not launch.preempted(report((1, -15), (0, 75)))  # rank 1 was ended first by a signal from elsewhere
    assert not launch.preempted(report((0, 75), (1, 1))) and not launch.preempted(report((0, 1)))
    assert not launch.preempted("no summary")


def test_a_resume_state_of_another_process_count_is_kept_and_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MODECONN_RESUME_DIR", str(tmp_path))
    monkeypatch.setattr(Runtime, "all_gather", lambda self, obj: [obj] * self.world_size)  # no process group here
    cli.setup_logging()
    one = resume_key.resume_state("fit_curve", Runtime(), {"lr": 0.1})
    one.epoch_done(3, {"x": 1})
    two = resume_key.resume_state("fit_curve", Runtime(world_size=2, rank=0), {"lr": 0.1})
    assert two.path.parent == tmp_path / "fit_curve" / "processes_2" and two.key != one.key
    assert one.path.is_file()  # kept where a 1-process rerun finds it
    two.epoch_done(1, {"x": 2})
    records = []
    monkeypatch.setattr(resume_key.log, "warning", lambda *a: records.append(a[0] % a[1:]))
    again = resume_key.resume_state("fit_curve", Runtime(), {"lr": 0.1})
    assert again.key == one.key and again.load()["epoch"] == 3
    assert len(records) == 1 and "saved by 2 process(es)" in records[0] and "MODECONN_NPROC=2" in records[0]
    assert two.path.is_file()
    records.clear()
    resume_key.resume_state("fit_curve", Runtime(), {"lr": 0.2})  # other settings: nothing to name
    assert records == []


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


@slow
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


@slow
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


def launched(name: str, out: str, *extra: str, env: dict, cwd: Path) -> subprocess.Popen:
    """Stage ``name`` as dvc.yaml runs it, started by the command itself ($MODECONN_NPROC=2 in ``env``)."""
    args = stage_args(name, out)[1:]  # without the "-m": python -m stages.<name> ...
    return subprocess.Popen([sys.executable, "-m", *args, *extra], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)


def tagged(tag: str) -> dict[int, dict[str, str]]:
    """pid → environment of the live processes whose environment holds MODECONN_TEST_TAG=tag."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(e.split("=", 1) for e in (proc / "environ").read_text().split("\0") if "=" in e)
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if env.get("MODECONN_TEST_TAG") == tag and state != "Z":
            found[int(proc.name)] = env
    return found


@slow
def test_a_rank_failing_mid_epoch_ends_the_curve_run_and_leaves_no_output_folder(workspace):
    env = {**ENV, "MODECONN_FAULT_RANK": "1:5", "MODECONN_NPROC": "2", "MODECONN_RESUME_DIR": "resume_fault"}
    start = time.perf_counter()
    proc = launched("fit_curve", "curve_failed", env=env, cwd=workspace)
    _, err = proc.communicate(timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode != 0
    assert "fault injected on rank 1 at training step 5" in err, err[-3000:]
    assert "2-process run of stages.fit_curve failed: rank 1 exited with code 1 first" in err, err[-3000:]
    assert seconds < 60, f"rank 0, waiting in the all-reduce, was left hanging ({seconds:.0f} s)"
    assert not (workspace / "data/curve_failed").exists(), "a failed run left its output folder"
    assert not (workspace / "metrics/curve_failed.json").exists()


@slow
def test_a_killed_rank_ends_the_run_and_leaves_no_process(workspace, tmp_path):
    long = workspace / "params_long.yaml"
    write_params(tmp_path, tiny_params(model=NO_BN, train__epochs=500))
    shutil.copy(tmp_path / "params.yaml", long)
    tag = uuid.uuid4().hex
    resume = tmp_path / "resume"
    env = {**ENV, "MODECONN_NPROC": "2", "MODECONN_TEST_TAG": tag, "MODECONN_RESUME_DIR": str(resume)}
    proc = launched("train_endpoint", "killed", "--seed", "0", "--params", long.name, env=env, cwd=workspace)
    try:
        deadline = time.perf_counter() + 120
        while not list(resume.glob("train_endpoint/seed_0/processes_2/*.pt")):  # mid-run: epoch 1 is saved
            assert proc.poll() is None and time.perf_counter() < deadline, "the run did not get going"
            time.sleep(0.2)
        (victim,) = [pid for pid, e in tagged(tag).items() if e.get("RANK") == "1"]
        os.kill(victim, signal.SIGKILL)
        start = time.perf_counter()
        _, err = proc.communicate(timeout=90)
        seconds = time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert seconds < 60, f"the run went on for {seconds:.0f} s after rank 1 was killed"
    assert "2-process run of stages.train_endpoint failed: rank 1 was killed by SIGKILL first" in err, err[-3000:]
    assert not (workspace / "data/killed").exists() and not (workspace / "metrics/killed.json").exists()
    time.sleep(1)
    assert tagged(tag) == {}, "processes of the run are left"


@slow
def test_a_preempted_two_process_run_resumes(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns(".modeconn"))
    args = (*stage_args("train_endpoint", "resumed"), "--seed", "1")
    r = torchrun(*args, cwd=ws, env={**ENV, "MODECONN_STOP_AFTER_EPOCHS": "1"})
    assert r.returncode != 0 and "rerun the same command" in r.stderr
    assert not (ws / "data/resumed").exists()
    # A run with another process count neither uses nor deletes that state, and says so.
    r = subprocess.run(
        [sys.executable, *args, "--out", "data/resumed_1", "--metrics", "metrics/resumed_1.json"],
        cwd=ws,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "saved by 2 process(es)" in r.stderr and "MODECONN_NPROC=2" in r.stderr, r.stderr[-3000:]
    assert json.loads((ws / "metrics/resumed_1.run.json").read_text())["resumed_after_epoch"] == 0
    r = torchrun(*args, cwd=ws)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((ws / "metrics/resumed.run.json").read_text())["resumed_after_epoch"] == 1
    assert_close(
        weights(ws / "data/resumed/model.pt", "state_dict"),
        weights(ws / "data/endpoints/seed_1/model.pt", "state_dict"),
        "resumed 2-process vs 1-process",
    )


@slow
def test_a_preempted_run_started_by_the_command_exits_75_without_a_traceback(workspace, tmp_path):
    """With $MODECONN_NPROC=2 the command starts torchrun itself; the preemption drill stops both ranks with
    PREEMPTED_EXIT after saving the state, and the command ends with that code and one line saying so, not
    torchrun's traceback of a failed child."""
    env = {**ENV, "MODECONN_NPROC": "2", "MODECONN_STOP_AFTER_EPOCHS": "1", "MODECONN_RESUME_DIR": str(tmp_path)}
    proc = launched("train_endpoint", "preempted", "--seed", "0", env=env, cwd=workspace)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == launch.PREEMPTED_EXIT, err[-3000:]
    assert "Traceback" not in err and "ChildFailedError" not in err and "Nothing was written" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if "2-process run of stages.train_endpoint" in x]
    assert "preempted" in line and "rerun the same command" in line, line
    assert list(tmp_path.glob("train_endpoint/seed_0/processes_2/*.pt")), "no state was saved"
    assert not (workspace / "data/preempted").exists() and not (workspace / "metrics/preempted.json").exists()


def test_each_rank_resumes_with_its_own_random_states(tmp_path, monkeypatch):
    """Rank 0 saves every rank's global random states (their dropout streams); each rank gets its own back in
    every capture of the state it loads, the generators (batch order, t) as saved; a state with the random
    states of another number of processes, or none, is stale. The collectives are stood in for: the 2-process
    run is test_a_preempted_two_process_run_with_dropout_ends_where_an_uninterrupted_one_ends."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(5)
    own = {}
    for rank in (0, 1):
        seed_everything(0, rank)
        torch.rand(3)  # a few masks drawn
        own[rank] = global_rng_state()
    monkeypatch.setattr(Runtime, "all_gather", lambda self, obj: [own[0], own[1]])
    set_rng_state({**own[0], "generators": []})  # rank 0 at the end of its epoch
    saving = ResumeState(tmp_path, "key", runtime=Runtime(world_size=2, rank=0))
    saving.epoch_done(1, {**capture(model, optimizer, 7, generator), "runs": {"current": capture(model, optimizer, 7)}})
    reader = ResumeState(tmp_path, "key")  # what rank 0 reads and broadcasts
    monkeypatch.setattr(Runtime, "broadcast", lambda self, obj: reader._read())
    for rank in (0, 1):
        state = ResumeState(tmp_path, "key", runtime=Runtime(world_size=2, rank=rank)).load()
        for capture_ in (state, state["runs"]["current"]):
            seed_everything(99)  # whatever the process drew since
            generator.manual_seed(99)
            assert restore(capture_, model, optimizer, *([generator] if capture_ is state else [])) == 7
            assert torch.equal(torch.get_rng_state(), own[rank]["torch"]), f"rank {rank} resumed another stream"
            assert random.getstate() == own[rank]["python"], f"rank {rank}: Python's stream"
            if capture_ is state:  # the generator as saved, the same on every rank
                assert torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())
    monkeypatch.setattr(Runtime, "all_gather", lambda self, obj: [own[0]] * 3)
    saving.epoch_done(2, capture(model, optimizer, 8))
    with pytest.raises(StaleState, match="3 process"):
        ResumeState(tmp_path, "key", runtime=Runtime(world_size=2, rank=1)).load()
    state = reader._read()
    del state["rng_ranks"]
    torch.save(dict(state), reader.path)
    with pytest.raises(StaleState, match="rng_ranks"):
        ResumeState(tmp_path, "key", runtime=Runtime(world_size=2, rank=1)).load()


@slow
def test_two_processes_draw_their_own_dropout_and_the_t_batches_and_loss_of_one(tmp_path):
    """A curve of WRN-10-1 with dropout 0.5, 6 epochs of 4 steps (tests/ddp_dropout_worker.py), in 1 and in 2
    processes: the ranks' dropout masks differ at every step; t, the batch order and the augmentation are those
    of one process (the two shards of a step are its batch); DDP sends nothing at a step; and the training loss
    follows the 1-process run's (each epoch within 0.05, both falling by more than 0.1: measured, the largest
    gap 0.013, the fall 0.23), though not its numbers (other masks, and BN over each shard on gloo)."""
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "one"), "6"], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    r = torchrun(str(WORKER), str(tmp_path / "two"), "6", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = torch.load(tmp_path / "one/rank_0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"two/rank_{rank}.pt", weights_only=True) for rank in (0, 1))

    assert len(r0["mask"]) == len(r1["mask"]) == len(ref["t"]) == 24
    same = [i for i, (a, b) in enumerate(zip(r0["mask"], r1["mask"])) if torch.equal(a, b)]
    assert same == [], f"ranks 0 and 1 drew the same dropout masks at steps {same}"
    for rec in (r0, r1):
        dropped = torch.stack([m.float().mean() for m in rec["mask"]])
        assert ((dropped > 0.4) & (dropped < 0.6)).all(), f"dropout 0.5 dropped {dropped.tolist()}"

    assert r0["t"] == r1["t"] == ref["t"], "the ranks drew another t than one process"
    for i, (x0, x1, x, y0, y1, y) in enumerate(zip(r0["x"], r1["x"], ref["x"], r0["y"], r1["y"], ref["y"])):
        assert torch.equal(torch.cat([x0, x1]), x), f"step {i}: the shards are not the batch of one process"
        assert torch.equal(torch.cat([y0, y1]), y), f"step {i}: labels"
    assert r0["broadcasts"] == r1["broadcasts"] == 0, "DDP broadcast buffers at a training step"

    assert r0["loss"] == r1["loss"]  # the epoch's loss over the global batch, on every rank
    gaps = [abs(a - b) for a, b in zip(r0["loss"], ref["loss"])]
    assert max(gaps) < 0.05, f"2 vs 1 process, per-epoch loss {r0['loss']} vs {ref['loss']}"
    for rec in (r0, ref):
        assert rec["loss"][-1] < rec["loss"][0] - 0.1, f"no training: {rec['loss']}"


@slow
def test_a_preempted_two_process_run_with_dropout_ends_where_an_uninterrupted_one_ends(workspace, tmp_path):
    """train_endpoint of WRN-10-1 with dropout 0.5 in 2 processes, stopped after epoch 1 and rerun, against the
    same run uninterrupted: bit for bit (each rank continues its own dropout stream, not rank 0's)."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns(".modeconn"))
    write_params(ws, tiny_params(model=DROPOUT, train__epochs=2))  # the data section, so the prepared data, as is
    args = (*stage_args("train_endpoint", "whole"), "--seed", "0")
    r = torchrun(*args, cwd=ws, env={**ENV, "MODECONN_RESUME_DIR": str(tmp_path / "resume_whole")})
    assert r.returncode == 0, r.stderr[-3000:]
    args = (*stage_args("train_endpoint", "resumed"), "--seed", "0")
    env = {**ENV, "MODECONN_RESUME_DIR": str(tmp_path / "resume")}
    r = torchrun(*args, cwd=ws, env={**env, "MODECONN_STOP_AFTER_EPOCHS": "1"})
    assert r.returncode != 0 and "rerun the same command" in r.stderr, r.stderr[-3000:]
    r = torchrun(*args, cwd=ws, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((ws / "metrics/resumed.run.json").read_text())["resumed_after_epoch"] == 1
    for name in ("model.pt", "epoch_1.pt", "test_logprobs.pt"):
        whole, resumed = (torch.load(ws / f"data/{run}/{name}", weights_only=True) for run in ("whole", "resumed"))
        assert_same(resumed, whole, f"{name}, resumed vs uninterrupted")
    a, b = (pd.read_csv(ws / f"metrics/{run}.csv") for run in ("whole", "resumed"))
    keep = [c for c in a.columns if c not in TIMINGS]
    pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=True)
