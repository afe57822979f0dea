"""Through the stage commands: FGE continues the endpoint checkpoint's optimizer, and the runtime
settings taken from MODECONN_PRECISION / MODECONN_CHANNELS_LAST, stated in the stage's first log line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

import modeconn.loop
from stages import fge, prepare, train_endpoint

from .stage_utils import build_workspace, invoke, tiny_params, write_params


def test_fge_starts_with_the_checkpoints_momentum_and_the_fge_settings(tiny_workspace, tmp_path, monkeypatch):
    """The paper's code starts FGE from the checkpoint's momentum buffers; lr, momentum and wd are FGE's own."""
    monkeypatch.chdir(tmp_path)
    for folder in ("data/prepared", "data/endpoints"):  # the tiny run's data and endpoints
        shutil.copytree(tiny_workspace / folder, folder)
    # FGE settings unlike train's (lr 0.05, momentum 0.9, wd 5e-4), so that a setting left as loaded shows.
    write_params(tmp_path, tiny_params(fge__lr_1=0.03, fge__momentum=0.8, fge__wd=0.001))
    starts = []  # (momentum buffers, param groups) of each run's optimizer as FGE's first epoch gets it
    train_epoch = modeconn.loop.train_epoch

    def spy(step, optimizer, *args, **kwargs):
        if not any(o is optimizer for o, _, _ in starts):
            buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in optimizer.param_groups[0]["params"]]
            buffers = [b.clone() if b is not None else None for b in buffers]
            groups = [{k: g[k] for k in ("lr", "momentum", "weight_decay")} for g in optimizer.param_groups]
            starts.append((optimizer, buffers, groups))
        return train_epoch(step, optimizer, *args, **kwargs)

    monkeypatch.setattr(modeconn.loop, "train_epoch", spy)
    r = invoke(fge, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(starts) == 2  # fge.start_seeds [0, 1], 1 epoch each
    for seed, (_, buffers, groups) in zip((0, 1), starts):
        saved = torch.load(f"data/endpoints/seed_{seed}/epoch_1.pt", weights_only=True)["optimizer"]
        expected = [saved["state"][i]["momentum_buffer"] for i in saved["param_groups"][0]["params"]]
        assert len(buffers) == len(expected) > 0
        for got, want in zip(buffers, expected):
            assert got is not None and torch.equal(got, want), f"seed {seed}: not the checkpoint's momentum"
        assert groups == [{"lr": 0.03, "momentum": 0.8, "weight_decay": 0.001}], groups
    assert json.loads(Path("metrics/fge.run.json").read_text())["momentum_from_checkpoint"] is True


def test_runtime_from_the_environment_is_in_the_first_log_line_and_the_run_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_workspace(tmp_path, [(prepare,)])
    monkeypatch.setenv("MODECONN_DEVICE", "cpu")
    monkeypatch.setenv("MODECONN_PRECISION", "bf16")
    monkeypatch.setenv("MODECONN_CHANNELS_LAST", "1")
    r = invoke(train_endpoint, "--seed", 0)  # no runtime option: the environment decides
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    message = re.sub(r"^\d\d:\d\d:\d\d modeconn: ", "", first)  # the log format off a terminal
    assert message.startswith("runtime:"), first
    assert "device cpu" in message and "precision bf16" in message and "memory format channels_last" in message
    run = json.loads(Path("metrics/endpoints/seed_0.run.json").read_text())
    assert (run["device"], run["precision"], run["channels_last"], run["processes"]) == ("cpu", "bf16", True, 1)
