"""The curvature stage through its CLI on the tiny workspace (conftest: the tiny ConvFC has BatchNorm).

References: the stage's numbers at the curve's first end against the library's estimators on a plain copy of the
endpoint whose BN is recalibrated by ``torch.optim.swa_utils.update_bn`` (the same subsets and seed, no L2 term); two
processes (torchrun, gloo) against one; bf16 autocast with channels_last forced on CPU against float32.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch.optim.swa_utils import update_bn

from modeconn.curvature import COLUMNS, hessian_eigenvalue, hessian_trace
from modeconn.curves import load_curve
from modeconn.data import eval_batches, load_prepared
from modeconn.models import from_spec
from stages import curvature, validate

from .stage_utils import invoke, tool_env, write_params
from .tiny import ROOT, tiny_params

OUTS = ("--metrics", "{}.json", "--table", "{}.csv", "--figure", "{}.png")


def outs(folder) -> list[str]:
    """The stage's outputs in ``folder`` (outside the shared workspace)."""
    return [a.format(folder / "curvature") for a in OUTS]


def test_help():
    r = invoke(curvature, "--help")
    assert r.exit_code == 0 and "--curve" in r.output and "--precision" in r.output


def test_curvature_stage_writes_the_table_the_summary_the_figure_and_the_report_shows_them(tiny_workspace):
    """What conftest's run of the stage wrote: one row per path and t, the ends shared by the curve and its
    segment measured once; λ_max and the trace at ŵ1 are the library's on a plain copy of the endpoint with BN
    recalibrated by update_bn; the report's section and the two headline keys."""
    cfg, wd = tiny_params()["curvature"], 0.0  # the data loss alone, as PyHessian
    rows = pd.read_csv(tiny_workspace / "metrics/curvature.csv")
    assert list(rows.columns) == ["path", *COLUMNS]
    ts = torch.linspace(0, 1, cfg["num_points"]).tolist()
    for name in ("curve", "segment", "aligned"):
        assert rows[rows.path == name]["t"].tolist() == pytest.approx(ts), name
    by = {name: rows[rows.path == name].reset_index(drop=True) for name in ("curve", "segment", "aligned")}
    for i in (0, -1):
        assert by["curve"].iloc[i].drop("path").equals(by["segment"].iloc[i].drop("path")), "an end measured twice"
    assert by["aligned"].iloc[0].drop("path").equals(by["curve"].iloc[0].drop("path"))  # ŵ1 is the aligned start
    assert (rows.top_eigenvalue > 0).all() and (rows.trace_stderr > 0).all() and (rows.eigenvalue_residual >= 0).all()

    curve, blob = load_curve(tiny_workspace / "data/curve/curve.pt", from_spec)
    data = load_prepared(tiny_workspace / "data/prepared", "cpu")
    b = eval_batches(data, cfg["batch_size"], bn_samples=cfg["bn_samples"], train_samples=cfg["train_samples"])
    plain = copy.deepcopy(curve.template)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(curve.endpoint(0)[name])
    update_bn(b.bn, plain)
    params = {k: v.detach() for k, v in plain.named_parameters()}
    first = by["curve"].iloc[0]
    top = hessian_eigenvalue(plain, params, b.train, wd=wd, tol=1e-8, iters=200)
    # a Ritz value lies below λ_max and within its residual of an eigenvalue
    assert top.value - first.eigenvalue_residual - 1e-6 <= first.top_eigenvalue <= top.value * (1 + 1e-5)
    if first.eigenvalue_converged:
        assert first.top_eigenvalue == pytest.approx(top.value, rel=2e-3)
    trace = hessian_trace(plain, params, b.train, wd=wd, probes=cfg["probes"], seed=cfg["seed"])
    assert first.trace == pytest.approx(trace.mean, rel=1e-5) and first.trace_stderr == pytest.approx(trace.stderr)

    s = json.loads((tiny_workspace / "metrics/curvature.json").read_text())
    assert s["endpoints"]["top_eigenvalue"] == pytest.approx(
        (first.top_eigenvalue + by["curve"].iloc[-1].top_eigenvalue) / 2
    )
    assert s["curve"]["top_eigenvalue"]["max"] == by["curve"].top_eigenvalue.max()
    run = json.loads((tiny_workspace / "metrics/curvature.run.json").read_text())
    assert list(s) == ["curve", "segment", "aligned", "endpoints"] and run["bn_samples"] == cfg["bn_samples"]
    assert (tiny_workspace / "metrics/curvature_along_t.png").stat().st_size > 1000
    text = (tiny_workspace / "metrics/report.md").read_text()
    assert "## Curvature along the paths" in text and "curvature_along_t.png" in text
    head = json.loads((tiny_workspace / "metrics/headline.json").read_text())
    assert head["curvature_endpoint_top_eigenvalue"] == s["endpoints"]["top_eigenvalue"]
    assert head["curvature_curve_max_top_eigenvalue"] == s["curve"]["top_eigenvalue"]["max"]


def test_gpu_settings_forced_on_cpu_keep_the_products_in_float32(tiny_workspace, tmp_path, monkeypatch):
    """bf16 autocast and channels_last, forced on CPU: the stage runs them (BN recalibrated under autocast, the
    products in float32); the curvature stays near float32's (only BN's statistics differ, by bf16's rounding)."""
    monkeypatch.chdir(tiny_workspace)
    r = invoke(curvature, *outs(tmp_path), "--device", "cpu", "--precision", "bf16", "--channels-last", "on")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "curvature.run.json").read_text())
    assert (run["precision"], run["channels_last"]) == ("bf16", True)
    bf16, fp32 = pd.read_csv(tmp_path / "curvature.csv"), pd.read_csv(tiny_workspace / "metrics/curvature.csv")
    assert torch.isfinite(torch.tensor(bf16[["loss", "top_eigenvalue", "trace"]].to_numpy())).all()
    assert bf16.top_eigenvalue.to_numpy() == pytest.approx(fp32.top_eigenvalue.to_numpy(), rel=0.1)


@pytest.mark.slow
def test_two_processes_give_the_curvature_of_one(tiny_workspace, tmp_path):
    """$MODECONN_NPROC=2: the command starts torchrun on itself (gloo, CPU), each rank takes half of every Hessian
    batch and the products are summed over both: the table is one process's, up to the order of the sums."""
    env = tool_env(MODECONN_NPROC="2", PYTHONPATH=str(ROOT), MODECONN_PLAIN="1")
    cmd = [sys.executable, "-m", "stages.curvature", "--device", "cpu", *outs(tmp_path)]
    r = subprocess.run(cmd, cwd=tiny_workspace, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "curvature.run.json").read_text())["processes"] == 2
    two, one = pd.read_csv(tmp_path / "curvature.csv"), pd.read_csv(tiny_workspace / "metrics/curvature.csv")
    for column in ("loss", "top_eigenvalue", "trace", "trace_stderr"):
        assert two[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=1e-4, abs=1e-6), column


def test_errors_for_people(tiny_workspace, tmp_path, monkeypatch):
    """A bad key, a missing curve: one line naming the key or the stage to run, exit code 1, nothing written; the
    params stage refuses the bad key first."""
    monkeypatch.chdir(tmp_path)
    args = ("--prepared", tiny_workspace / "data/prepared", "--device", "cpu")
    for change, key in (
        ({"curvature__probes": 1}, "curvature.probes must be at least 2"),
        ({"curvature__iters": 0}, "curvature.iters"),
        ({"curvature__num_points": 1}, "curvature.num_points"),
        ({"curvature__train_samples": -1}, "curvature.train_samples"),
    ):
        write_params(tmp_path, tiny_params(**change))
        r = invoke(curvature, *args, "--curve", tiny_workspace / "data/curve")
        assert r.exit_code == 1 and key in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
        r = invoke(validate, "--out", tmp_path / "params.ok")
        assert r.exit_code == 1 and key in " ".join(r.output.split()), r.output
    write_params(tmp_path, tiny_params())
    r = invoke(curvature, *args, "--curve", tmp_path / "nowhere")
    assert r.exit_code == 1 and "fit_curve" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2, r.output  # the runtime's line, then the error
    assert not (tmp_path / "metrics").exists()
