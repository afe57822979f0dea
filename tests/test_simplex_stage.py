"""The simplex and triangle stages through the CLI on the tiny workspace, ESPRO in compare and the report, the
simplex's measuring and file round trip, and errors that name the key."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from modeconn import budget, ensemble
from modeconn.data import eval_batches
from modeconn.models import from_spec, model_spec
from modeconn.simplex import Simplex, load_simplex, measure_samples, measure_simplex, save_simplex
from stages import compare, report, simplex, triangle, validate

from .stage_utils import invoke, tiny_params, write_params


def outs(folder, seed=0):
    return (
        "--out",
        folder / f"data/simplex/seed_{seed}",
        "--metrics",
        folder / f"metrics/simplex/seed_{seed}.json",
    ) + ("--table", folder / f"metrics/simplex/seed_{seed}.csv")


@pytest.mark.parametrize("module", [simplex, triangle], ids=lambda m: m.__name__)
def test_help(module):
    r = invoke(module, "--help")
    assert r.exit_code == 0 and "--endpoints" in r.output and "--precision" in r.output


def test_simplex_stage_writes_the_simplex_its_points_and_their_summary(tiny_workspace):
    ws, cfg = tiny_workspace, tiny_params()["simplex"]
    fitted, blob = load_simplex(ws / "data/simplex/seed_0/simplex.pt", from_spec)
    start = torch.load(ws / "data/endpoints/seed_0/epoch_1.pt", weights_only=True)["state_dict"]
    assert fitted.num_fixed == 1 and fitted.num_free == cfg["free"] == 2 and blob["start_epoch"] == 1
    assert all(torch.equal(v, start[k]) for k, v in fitted.vertex(0).items()), "the fixed vertex is the checkpoint"
    assert fitted.volume() > 0, "the free vertices moved apart"
    pred = torch.load(ws / "data/simplex/seed_0/predictions.pt", weights_only=True)
    n = cfg["samples"]
    assert pred["logprobs"].shape == (n, 96, 4) and pred["val_logprobs"].shape == (n, 48, 4)
    assert pred["cost"] == cfg["start_epoch"] + cfg["epochs"] and pred["coefficients"].shape == (n, 3)
    assert torch.allclose(pred["coefficients"].sum(1), torch.ones(n, dtype=torch.float64))
    s = json.loads((ws / "metrics/simplex/seed_0.json").read_text())
    run = json.loads((ws / "metrics/simplex/seed_0.run.json").read_text())
    assert s["samples"] == n and s["volume"] == pytest.approx(fitted.volume(), rel=1e-6) and run["cost"] == 2
    assert set(s["vertices"]) == {"vertex_0", "vertex_1", "vertex_2"}
    errors = [ensemble.error(lp, pred["labels"]) for lp in pred["logprobs"]]
    assert s["interior"]["test_error"]["mean"] == pytest.approx(sum(errors) / n)
    ens = ensemble.error(ensemble.combine(list(pred["logprobs"])), pred["labels"])
    assert s["interior_ensemble"]["test_error"] == pytest.approx(ens)
    rows = pd.read_csv(ws / "metrics/simplex/seed_0.csv")
    assert list(rows["point"]) == ["vertex_0", "vertex_1", "vertex_2"] + [f"sample_{j}" for j in range(n)]
    assert rows[["alpha_0", "alpha_1", "alpha_2"]].sum(axis=1).tolist() == pytest.approx([1.0] * (3 + n))


def test_triangle_stage_measures_the_simplex_of_the_endpoints(tiny_workspace):
    """The tiny run has two seeds: its "triangle" is the segment between them, of length ‖θ_1 − θ_0‖."""
    ws = tiny_workspace
    s = json.loads((ws / "metrics/triangle.json").read_text())
    run = json.loads((ws / "metrics/triangle.run.json").read_text())
    ckpts = [torch.load(ws / f"data/endpoints/seed_{i}/model.pt", weights_only=True) for i in (0, 1)]
    names = [n for n, _ in from_spec(ckpts[0]["spec"]).named_parameters()]
    a, b = (torch.cat([c["state_dict"][n].reshape(-1).double() for n in names]) for c in ckpts)
    assert s["volume"] == pytest.approx((a - b).norm().item(), rel=1e-6)
    assert run["seeds"] == {"0": 0, "1": 1} and s["samples"] == tiny_params()["simplex"]["samples"]
    assert set(s["vertices"]) == {"vertex_0", "vertex_1"} and 0 <= s["interior"]["test_error"]["mean"] <= 1


def test_espro_rows_in_compare_the_report_and_the_headline(tiny_workspace, tmp_path, monkeypatch):
    """Compare and the report run again here, writing to ``tmp_path``: other tests rerun compare in the workspace
    without ``--simplex``."""
    ws, n = tiny_workspace, tiny_params()["simplex"]["samples"]
    monkeypatch.chdir(ws)
    out = ["--metrics", tmp_path / "c.json", "--table", tmp_path / "c.md", "--curve-csv", tmp_path / "epochs"]
    out += ["--figure", tmp_path / "c.png", "--reliability", tmp_path / "r.png"]
    assert invoke(compare, "--simplex", "data/simplex", *out).exit_code == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["1B"]["espro"]["members"] == n and c["2B"]["espro"]["members"] == 2 * n  # B = 2 = 1 + 1 epochs each
    assert c["1B_over_seeds"]["espro"]["n"] == 2 and c["val"]["1B"]["espro"]["members"] == n
    assert "| ESPRO (points of trained simplexes) | test |" in (tmp_path / "c.md").read_text()
    assert len(pd.read_csv(tmp_path / "epochs/espro.csv")) == 2 * n
    r = invoke(report, "--out", tmp_path / "report.md", "--headline", tmp_path / "h.json")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "report.md").read_text()
    assert "## Simplexes of low loss" in text and "| from seed 1 |" in text and "| independent endpoints |" in text
    head = json.loads((tmp_path / "h.json").read_text())
    tri = json.loads((ws / "metrics/triangle.json").read_text())
    assert head["triangle_interior_test_error"] == tri["interior"]["test_error"]["mean"]
    means = [
        json.loads((ws / f"metrics/simplex/seed_{s}.json").read_text())["interior"]["test_error"]["mean"]
        for s in (0, 1)
    ]
    assert head["simplex_interior_test_error"] == pytest.approx(sum(means) / 2)


def test_simplex_stage_with_the_gpu_settings_forced_on_the_cpu(tiny_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    ws = ("--prepared", tiny_workspace / "data/prepared", "--endpoints", tiny_workspace / "data/endpoints")
    r = invoke(
        simplex, "--seed", 1, *ws, *outs(tmp_path, 1), "--device", "cpu", "--precision", "bf16", "--channels-last", "on"
    )
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "metrics/simplex/seed_1.json").read_text())
    run = json.loads((tmp_path / "metrics/simplex/seed_1.run.json").read_text())
    assert run["precision"] == "bf16" and run["channels_last"] and math.isfinite(s["interior"]["test_nll"]["mean"])
    fitted, _ = load_simplex(tmp_path / "data/simplex/seed_1/simplex.pt", from_spec)  # stored in the plain layout
    start = torch.load(tiny_workspace / "data/endpoints/seed_1/epoch_1.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, start[k]) for k, v in fitted.vertex(0).items())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"simplex__start_epoch": 3}, "no checkpoint of endpoint seed 0 at epoch 3"),
        ({"simplex__free": 0}, "simplex.free must be at least 1"),
        ({"simplex__triangle": [0]}, "simplex.triangle must name two or more different endpoint seeds"),
        ({"simplex__samples": 0}, "simplex.samples must be at least 1"),
        ({"simplex__batch_size": 1000}, "simplex.batch_size 1000 is larger than the 192 training images"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(tiny_workspace, tmp_path, monkeypatch, changes, message):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(**changes))
    ws = ("--prepared", tiny_workspace / "data/prepared", "--endpoints", tiny_workspace / "data/endpoints")
    r = invoke(simplex, "--seed", 0, *ws, *outs(tmp_path), "--device", "cpu")
    assert r.exit_code == 1 and message in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "data/simplex").exists() and not (tmp_path / "metrics").exists()


def test_the_params_stage_checks_the_simplex_section_before_any_stage(tmp_path):
    for changes, message in (
        ({"simplex__batch_size": 1000}, "simplex.batch_size 1000 is larger than the 192 training images"),
        ({"simplex__start_files": ["nowhere.pt"]}, "simplex.start_files: nowhere.pt not found"),
        ({"simplex__volume_weight": -1.0}, "simplex.volume_weight must be non-negative"),
    ):
        path = write_params(tmp_path, tiny_params(**changes))
        r = invoke(validate, "--params", path, "--out", tmp_path / "ok", "--batch-sizes", "train,simplex")
        assert r.exit_code == 1 and message in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "ok").exists()


def test_triangle_of_a_seed_never_trained_and_compare_without_simplexes_name_what_to_run(
    tiny_workspace, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(simplex__triangle=[0, 7]))
    ws = ("--prepared", tiny_workspace / "data/prepared", "--endpoints", tiny_workspace / "data/endpoints")
    r = invoke(triangle, *ws, "--metrics", tmp_path / "t.json", "--table", tmp_path / "t.csv", "--device", "cpu")
    assert r.exit_code == 1 and "seed_7/model.pt" in r.output and "Traceback" not in r.output, r.output
    write_params(tmp_path, tiny_params())
    args = ["--endpoints", tiny_workspace / "data/endpoints", "--fge", tiny_workspace / "data/fge/snapshots.pt"]
    args += ["--sse", tiny_workspace / "data/sse/snapshots.pt", "--simplex", tmp_path / "nowhere"]
    r = invoke(compare, *args, "--metrics", tmp_path / "c.json", "--table", tmp_path / "c.md")
    assert r.exit_code == 1 and "dvc repro simplex" in r.output and "Traceback" not in r.output, r.output


def test_budget_members_cost_each_simplex_after_the_ones_before():
    y, K, B = torch.tensor([0, 1, 1, 0]), 2, 6.0
    lp = lambda n: torch.log_softmax(torch.randn(n, 4, K, generator=torch.Generator().manual_seed(n)), -1)  # noqa: E731
    ind = [(lp(1)[0], None)]
    fge = [{"start_epoch": 4, "cost": 6, "snapshots": [{"epoch": 2, "logprobs": lp(1)[0]}]}]
    sse = [{"start_epoch": 0, "cost": 6, "snapshots": [{"epoch": 6, "logprobs": lp(1)[0]}]}]
    plain = budget.budget_members(B, ind, fge, sse, y)
    assert plain.methods == budget.METHODS and "espro" not in budget.compare_budgets(plain, B, (1,)).tables["1B"]
    espro = [{"cost": 6.0, "logprobs": lp(3), "val_logprobs": None}, {"cost": 8.0, "logprobs": lp(2)}]
    pool = budget.budget_members(B, ind, fge, sse, y, espro_runs=espro)
    costs = [m.cost for m in pool.members if m.method == "espro"]
    assert costs == [6.0] * 3 + [14.0] * 2 and pool.methods[-1] == "espro"
    assert [len(r) for r in pool.singles["espro"]] == [3, 2] and pool.singles["espro"][1][0].cost == 8.0
    t = budget.compare_budgets(pool, B, (1, 2, 3)).tables
    assert [t[f"{k}B"]["espro"]["members"] for k in (1, 2, 3)] == [3, 3, 5]
    assert t["1B_over_seeds"]["espro"]["n"] == 1  # the second simplex costs 8 > B: no replicate at 1B
    assert "ESPRO" in budget.markdown(t, {"B": B, "ensemble": "probs", "test_samples": 4}, (1, 2, 3))


def test_measure_simplex_measures_the_points_measure_samples_draws_and_the_file_round_trips(tiny_data, tmp_path):
    spec = model_spec("mlp", 3, 1, 12, {"width": 16})
    a, b = ({k: v.detach() for k, v in (torch.manual_seed(s), from_spec(spec))[1].named_parameters()} for s in (0, 1))
    sx = Simplex(from_spec(spec), [a], free=[b, a])
    batches = eval_batches(tiny_data, 64, train_samples=64)
    m = measure_simplex(sx, 3, torch.Generator().manual_seed(5), batches)
    same = measure_samples(sx, 3, torch.Generator().manual_seed(5), batches)
    assert [r.test_error for r in m.samples] == [r.test_error for r in same]
    assert m.volumes == [pytest.approx(sx.volume())] and len(m.vertices) == 3 and len(m.coefficients[0]) == 3
    s = m.summary(wd=0.0)
    assert s["vertex_mean"]["test_error"] == pytest.approx(sum(r.test_error for r in m.vertices) / 3)
    inside = s["interior"]["test_error"]
    assert inside["min"] <= inside["mean"] <= inside["max"] and s["volume"] == m.volumes[0]
    save_simplex(tmp_path / "s.pt", sx, spec)
    back, _ = load_simplex(tmp_path / "s.pt", from_spec)
    assert back.num_fixed == 1 and back.num_free == 2 and back.volume() == pytest.approx(sx.volume(), rel=1e-6)
    assert all(torch.equal(back.weights([0.2, 0.3, 0.5])[k], sx.weights([0.2, 0.3, 0.5])[k]) for k in a)
