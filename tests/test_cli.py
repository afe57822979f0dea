"""Every stage command through Typer's CliRunner, on a tiny synthetic workspace, including bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from modeconn.errors import ConfigError
from stages import compare, eval_curve, fge, fit_curve, path_ensembles, plane, prepare, report, sse, train_endpoint

from .stage_utils import invoke, tiny_params, write_params

ALL = [prepare, train_endpoint, fit_curve, eval_curve, fge, sse, compare, plane, path_ensembles, report]


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__)
def test_help_explains_every_option(module):
    result = invoke(module, "--help")
    assert result.exit_code == 0
    assert "--params" in result.output
    if module not in (prepare, compare, report):
        assert "--device" in result.output


@pytest.fixture
def workspace(tiny_workspace):
    """The session's tiny workspace (conftest): the whole pipeline on the tiny config."""
    return tiny_workspace


def test_pipeline_stages_write_their_outputs(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    meta = json.loads((workspace / "data/prepared/meta.json").read_text())
    assert meta["name"] == "synthetic" and meta["n_train"] == 240 - 48 and meta["n_val"] == 48
    m = json.loads((workspace / "metrics/endpoints/seed_0.json").read_text())
    run = json.loads((workspace / "metrics/endpoints/seed_0.run.json").read_text())
    assert run["epochs"] == 2 and 0 <= m["test_accuracy"] <= 1 and m["test_nll"] > 0
    assert set(m) == {
        "train_loss",
        "train_accuracy",
        "test_nll",
        "test_accuracy",
        "test_error",
        "val_nll",
        "val_accuracy",
    }  # numbers only
    assert (workspace / "data/endpoints/seed_0/epoch_1.pt").is_file()
    assert (workspace / "data/endpoints/seed_0/test_logprobs.pt").is_file()
    for module in (eval_curve, fge, sse):
        r = invoke(module, "--device", "cpu")
        assert r.exit_code == 0, r.output
    r = invoke(compare)
    assert r.exit_code == 0, r.output
    curve = json.loads((workspace / "metrics/curve.json").read_text())
    assert set(curve) == {"curve", "segment", "aligned", "length", "barrier", "alignment", "ensemble", "ensemble_val"}
    curve_run = json.loads((workspace / "metrics/curve.run.json").read_text())
    assert curve_run["bn_samples"] == 192  # convfc with BN: recalibrated on every training image
    assert curve["length"]["ratio"] >= 1 - 1e-6  # the segment is the shortest path
    res = json.loads((workspace / "metrics/compare.json").read_text())
    assert res["1B"]["ind"]["members"] == 1 and res["2B"]["ind"]["members"] == 2
    # FGE at 1B: start epoch 1 + 1 FGE epoch = 2 = B, two snapshots (cycle 0.5 epoch).
    assert res["1B"]["fge"]["members"] == 2 and res["2B"]["fge"]["members"] == 4
    assert res["1B"]["sse"]["members"] == 2
    assert "| FGE |" in (workspace / "metrics/compare.md").read_text()
    check_validation_split(workspace, m, curve, res)
    check_swa_and_calibration(workspace, curve, res)

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        else:
            yield x

    # `dvc metrics show/diff` read scalar leaves only: no list or null in any metrics file.
    for path in (workspace / "metrics").rglob("*.json"):
        tree = json.loads(path.read_text())
        assert all(isinstance(v, (int, float, str)) for v in leaves(tree)), path
        assert '"error"' not in path.read_text(), f"{path}: DVC reads a key named error as a failure"
    assert json.loads((workspace / "metrics/compare.run.json").read_text())["seeds"] == {"0": 0, "1": 1}
    # Metrics files hold numbers only (settings are params, run facts are in the .run.json files).
    for path in (workspace / "metrics").rglob("*.json"):
        if not path.name.endswith(".run.json"):
            assert all(isinstance(v, (int, float)) for v in leaves(json.loads(path.read_text()))), path


def check_validation_split(workspace, endpoint: dict, curve: dict, res: dict) -> None:
    """Every stage that measures test also measures validation, and compare's validation figures are the
    ensembles of the stored validation predictions (computed here by hand, from the files)."""
    val = torch.load(workspace / "data/endpoints/seed_0/val_logprobs.pt", weights_only=True)
    val_acc = (val["logprobs"].argmax(1) == val["labels"]).float().mean().item()
    assert val["labels"].numel() == 48
    assert endpoint["val_accuracy"] == pytest.approx(val_acc)
    assert res["val"]["1B"]["ind"]["val_error"] == pytest.approx(1 - val_acc)
    assert res["val"]["1B"]["ind"]["members"] == res["1B"]["ind"]["members"] == 1
    # FGE at 1B: the two snapshots of the first run, probabilities averaged.
    snaps = torch.load(workspace / "data/fge/snapshots.pt", weights_only=True)
    assert torch.equal(snaps["val_labels"], val["labels"])
    lps = [s["val_logprobs"] for s in snaps["runs"][0]["snapshots"]]
    probs = torch.stack([lp.exp() for lp in lps]).mean(0)
    fge_acc = (probs.argmax(1) == val["labels"]).float().mean().item()
    fge_nll = -probs.log().gather(1, val["labels"][:, None]).mean().item()
    assert res["val"]["1B"]["fge"]["val_error"] == pytest.approx(1 - fge_acc)
    assert res["val"]["1B"]["fge"]["nll"] == pytest.approx(fge_nll, rel=1e-5)
    assert res["val"]["1B"]["fge"]["nll"] != pytest.approx(res["1B"]["fge"]["nll"])  # another split
    table = (workspace / "metrics/compare.md").read_text()
    assert "| FGE | val |" in table and "| FGE | test |" in table
    # eval_curve: validation error along both paths; its endpoint values are the BN-recalibrated endpoints'.
    assert 0 <= curve["curve"]["val_error"]["max"] <= 1 and 0 <= curve["segment"]["val_error"]["max"] <= 1
    assert curve["curve"]["val_error"]["start"] == pytest.approx(curve["segment"]["val_error"]["start"])
    fge_rows = (workspace / "metrics/fge.csv").read_text().splitlines()[0]
    assert "ensemble_val_accuracy" in fge_rows


def check_swa_and_calibration(workspace, curve: dict, res: dict) -> None:
    """The SWA row (one SWA network per FGE run, costing what the run's last snapshot costs) and the ECE of
    every ensemble, recomputed here from the stored predictions."""
    from modeconn import calibration, ensemble

    snaps = torch.load(workspace / "data/fge/snapshots.pt", weights_only=True)
    assert snaps["format"] == "modeconn.snapshots/1" and {"runs", "labels", "val_labels"} <= set(snaps)
    for run in snaps["runs"]:
        swa = run["swa"]
        assert swa["snapshots"] == len(run["snapshots"]) == 2
        assert swa["epoch"] == run["snapshots"][-1]["epoch"]
        assert swa["logprobs"].shape == run["snapshots"][0]["logprobs"].shape
        assert swa["val_logprobs"].shape == run["snapshots"][0]["val_logprobs"].shape
    y, y_val = snaps["labels"], snaps["val_labels"]
    # 1B = 2 epochs: run 0's SWA network (its last snapshot at 1 + 1 = 2 epochs); 2B: both runs' SWA networks.
    assert res["1B"]["swa"]["members"] == 1 and res["2B"]["swa"]["members"] == 2
    swa0 = snaps["runs"][0]["swa"]
    assert res["1B"]["swa"]["test_error"] == pytest.approx(ensemble.error(swa0["logprobs"], y))
    assert res["1B"]["swa"]["ece"] == pytest.approx(calibration.ece(swa0["logprobs"], y))
    assert res["val"]["1B"]["swa"]["val_error"] == pytest.approx(ensemble.error(swa0["val_logprobs"], y_val))
    both = ensemble.combine([r["swa"]["logprobs"] for r in snaps["runs"]])
    assert res["2B"]["swa"]["nll"] == pytest.approx(ensemble.nll(both, y), rel=1e-5)
    fge_1b = ensemble.combine([s["logprobs"] for s in snaps["runs"][0]["snapshots"]])
    assert res["1B"]["fge"]["ece"] == pytest.approx(calibration.ece(fge_1b, y), abs=1e-6)
    for split, table in (("test", res), ("val", res["val"])):
        for k in ("1B", "2B"):
            for method in ("ind", "sse", "fge", "swa"):
                r = table[k][method]
                assert not r["members"] or 0 <= r["ece"] <= 1, (split, k, method)
    assert res["1B_over_seeds"]["swa"]["n"] == 2
    md = (workspace / "metrics/compare.md").read_text()
    assert "| SWA (FGE snapshots averaged) | test |" in md and "ECE %" in md
    assert (workspace / "metrics/reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert (workspace / "metrics/compare_epochs/swa.csv").is_file()
    fge_json = json.loads((workspace / "metrics/fge.json").read_text())
    swa_accs = [1 - ensemble.error(r["swa"]["logprobs"], y) for r in snaps["runs"]]
    assert fge_json["swa_accuracy"] == pytest.approx(sum(swa_accs) / 2)
    # eval_curve: ECE of every point (before and after temperature scaling) and of every curve ensemble.
    stored = torch.load(workspace / "data/curve_eval/curve.pt", weights_only=True)
    assert curve["curve"]["test_ece"]["start"] == pytest.approx(calibration.ece(stored["logprobs"][0], y))
    assert 0 <= curve["curve"]["test_ece_scaled"]["max"] <= 1 and 0 <= curve["segment"]["test_ece"]["max"] <= 1
    assert curve["ensemble"]["curve"]["ece"] == pytest.approx(
        calibration.ece(ensemble.combine(list(stored["logprobs"])), y)
    )
    for key in ("endpoints", "curve", "segment", "curve_scaled", "endpoints_scaled"):
        assert 0 <= curve["ensemble"][key]["ece"] <= 1, key
    rows = (workspace / "metrics/curve_eval.csv").read_text().splitlines()[0].split(",")
    assert "test_ece" in rows and "test_ece_scaled" in rows


def _bad(tmp_path, monkeypatch, module, *args, **overrides):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(**overrides))
    r = invoke(module, *args)
    assert r.exit_code != 0
    return r.output


def test_negative_epochs(tmp_path, monkeypatch):
    out = _bad(tmp_path, monkeypatch, train_endpoint, "--seed", 0, train__epochs=-1)
    assert "train.epochs" in out and "Traceback" not in out


def test_unknown_model(workspace, tmp_path, monkeypatch):
    out = _bad(
        tmp_path,
        monkeypatch,
        train_endpoint,
        "--seed",
        0,
        "--prepared",
        workspace / "data/prepared",
        model={"name": "resnet9000", "args": {}},
    )
    assert "resnet9000" in out and "convfc" in out
    assert not (tmp_path / "data/endpoints").exists()


def test_unknown_and_missing_keys(tmp_path, monkeypatch):
    params = tiny_params()
    params["train"]["learning_rate"] = 0.1
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, params)
    r = invoke(train_endpoint, "--seed", 0)
    assert r.exit_code == 1 and "train.learning_rate" in r.output
    del params["train"]["learning_rate"], params["train"]["epochs"]
    write_params(tmp_path, params)
    r = invoke(train_endpoint, "--seed", 0)
    assert r.exit_code == 1 and "missing key train.epochs" in r.output


def test_unknown_dataset(tmp_path, monkeypatch):
    out = _bad(tmp_path, monkeypatch, prepare, data__name="imagenet22k")
    assert "imagenet22k" in out and "fashion_mnist" in out


def test_missing_data(tmp_path, monkeypatch):
    out = _bad(tmp_path, monkeypatch, train_endpoint, "--seed", 0)
    assert "prepare" in out and "Traceback" not in out


def test_missing_raw_files(tmp_path, monkeypatch):
    out = _bad(tmp_path, monkeypatch, prepare, data__name="cifar10", data__raw_dir=str(tmp_path / "raw"))
    assert "cifar" in out.lower() and not (tmp_path / "data/prepared").exists()


def test_same_seed_twice_and_bad_bends(workspace, tmp_path, monkeypatch):
    args = ("--prepared", workspace / "data/prepared", "--endpoints", workspace / "data/endpoints")
    out = _bad(tmp_path, monkeypatch, fit_curve, *args, curve__endpoints=[1, 1])
    assert "twice" in out
    out = _bad(tmp_path, monkeypatch, fit_curve, *args, curve__num_bends=2)
    assert "curve.num_bends" in out
    out = _bad(tmp_path, monkeypatch, eval_curve, "--prepared", workspace / "data/prepared", eval__num_points=1)
    assert "eval.num_points" in out


def test_missing_curve_file(workspace, tmp_path, monkeypatch):
    out = _bad(
        tmp_path, monkeypatch, eval_curve, "--prepared", workspace / "data/prepared", "--curve", tmp_path / "nowhere"
    )
    assert "curve.pt" in out and "fit_curve" in out


def test_corrupt_checkpoint(workspace, tmp_path, monkeypatch):
    import shutil

    endpoints = tmp_path / "endpoints"
    shutil.copytree(workspace / "data/endpoints", endpoints)
    (endpoints / "seed_1/model.pt").write_bytes(b"not a checkpoint")
    out = _bad(tmp_path, monkeypatch, fit_curve, "--prepared", workspace / "data/prepared", "--endpoints", endpoints)
    assert "seed_1/model.pt" in out and "corrupt" in out
    assert not (tmp_path / "data/curve/curve.pt").exists()


def test_endpoints_of_different_architectures(workspace, tmp_path, monkeypatch):
    import shutil

    endpoints = tmp_path / "endpoints"
    shutil.copytree(workspace / "data/endpoints", endpoints)
    ckpt = torch.load(endpoints / "seed_1/model.pt", weights_only=True)
    ckpt["spec"]["args"] = dict(ckpt["spec"]["args"], width=8)
    torch.save(ckpt, endpoints / "seed_1/model.pt")
    out = _bad(tmp_path, monkeypatch, fit_curve, "--prepared", workspace / "data/prepared", "--endpoints", endpoints)
    assert "different architectures" in out


def test_fge_bad_cycle_lrs_and_missing_start(workspace, tmp_path, monkeypatch):
    args = ("--prepared", workspace / "data/prepared", "--endpoints", workspace / "data/endpoints")
    out = _bad(tmp_path, monkeypatch, fge, *args, fge__cycle=3, fge__epochs=4)
    assert "fge.cycle" in out and "even" in out
    out = _bad(tmp_path, monkeypatch, fge, *args, fge__lr_1=0.001, fge__lr_2=0.01)
    assert "fge.lr_2" in out
    out = _bad(tmp_path, monkeypatch, fge, *args, fge__start_epoch=2 + 5)
    assert "train.save_epochs" in out and not (tmp_path / "data/fge").exists()


def test_nan_loss_is_a_clear_error_and_writes_nothing(workspace, tmp_path, monkeypatch):
    out = _bad(
        tmp_path,
        monkeypatch,
        train_endpoint,
        "--seed",
        0,
        "--prepared",
        workspace / "data/prepared",
        "--device",
        "cpu",
        train__lr=1e12,
        train__momentum=0.0,
    )
    assert "diverged" in out and "NaN" in out
    assert not (tmp_path / "data/endpoints/seed_0").exists()
    assert not (tmp_path / "metrics/endpoints/seed_0.json").exists()


# ------------------------------------------------------------------ params files other than params.yaml


def test_errors_name_the_params_file_given(tmp_path, monkeypatch):
    """A missing key (here fge.lr_2) stops the stage instead of running with a default, naming the file that
    --params points at; a misspelt section is named with the known ones."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    del params["fge"]["lr_2"]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = invoke(fge, "--params", "exp.yaml", "--device", "cpu")
    assert r.exit_code == 1 and "missing key fge.lr_2 in exp.yaml" in r.output, r.output
    assert "params.yaml" not in r.output and "Traceback" not in r.output
    params = tiny_params()
    params["fgee"] = params["fge"]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = invoke(fge, "--params", "exp.yaml", "--device", "cpu")
    assert r.exit_code == 1 and "unknown section 'fgee' in exp.yaml" in r.output and "fge," in r.output, r.output


# ------------------------------------------------------------------ small data × default batch sizes


@pytest.mark.parametrize(
    "module, key, args",
    [
        (train_endpoint, "train", ("--seed", 0)),
        (fit_curve, "curve", ()),
        (fge, "fge", ()),
        (sse, "sse", ()),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_a_batch_larger_than_the_training_set_is_a_clear_error(workspace, tmp_path, monkeypatch, module, key, args):
    """192 training images and a batch of 500: an epoch would have no batch (the incomplete one is dropped)."""
    where = ("--prepared", workspace / "data/prepared", "--endpoints", workspace / "data/endpoints")
    if module is train_endpoint or module is sse:
        where = where[:2]
    out = _bad(tmp_path, monkeypatch, module, *args, *where, "--device", "cpu", **{f"{key}__batch_size": 500})
    assert f"{key}.batch_size 500 is larger than the 192 training images" in out, out
    assert "lower it" in out and "Traceback" not in out and "ZeroDivision" not in out


def test_the_library_says_an_epoch_had_no_batch():
    """modeconn.train.train_epoch on a loader whose one batch is incomplete (and dropped): a ModeconnError naming
    the batch size, never a ZeroDivisionError later (the LR schedule, the per-epoch means, the FGE summary)."""
    from modeconn.data import DATASETS, Loader, Split
    from modeconn.errors import ModeconnError
    from modeconn.snapshots import runs_summary
    from modeconn.train import cross_entropy_step, make_sgd, train_epoch

    train = Split(torch.zeros(20, 1, 28, 28, dtype=torch.uint8), torch.arange(20) % 2)
    batches = Loader(train, DATASETS["synthetic"], 32, train=True, drop_last=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 4))
    with pytest.raises(ConfigError, match="batch size 32 is larger than the 20 training images"):
        train_epoch(cross_entropy_step(model), make_sgd(model.parameters(), 0.1, 0.9, 0.0), batches, lambda i: 0.1, 1)
    with pytest.raises(ModeconnError, match="no snapshots"):
        runs_summary([])


# ------------------------------------------------------------------ FGE: settings that do nothing, its start


def test_fge_warns_when_a_run_takes_one_snapshot_and_names_its_start_files(workspace, tmp_path, monkeypatch):
    """fge.cycle = 2 with fge.epochs = 1 is accepted but takes one snapshot per run (no ensemble, SWA = FGE, no
    distance): one warning line in the log and under ``warnings`` in fge.run.json. Started from fge.start_files,
    the log line names the files, not the seeds."""
    monkeypatch.chdir(tmp_path)
    start = workspace / "data/endpoints/seed_0/epoch_1.pt"
    write_params(tmp_path, tiny_params(fge__cycle=2, fge__epochs=1, fge__start_files=[str(start)]))
    r = invoke(fge, "--prepared", workspace / "data/prepared", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"from {start} (fge.start_files" in r.output and "of seeds" not in r.output, r.output
    (warning,) = [line for line in r.output.splitlines() if "takes 1 snapshot per run" in line]
    assert "fge.cycle = 2" in warning and "fge.epochs = 1" in warning, warning
    info = json.loads((tmp_path / "metrics/fge.run.json").read_text())
    assert info["snapshots_per_run"] == {"0": 1} and "1 snapshot per run" in info["warnings"]["0"]
    write_params(tmp_path, tiny_params())  # cycle 0.5 epoch: 2 snapshots per run, no warning
    r = invoke(fge, "--prepared", workspace / "data/prepared", "--endpoints", workspace / "data/endpoints")
    assert r.exit_code == 0 and "snapshot per run" not in r.output, r.output
    assert "from epoch 1 of seeds [0, 1]" in r.output
    assert json.loads((tmp_path / "metrics/fge.run.json").read_text())["warnings"] == {}


# ------------------------------------------------------------------ stored predictions that are not what a stage reads


def _copy_predictions(workspace, tmp_path):
    """The endpoints' stored predictions (test and validation), copied out of the session's workspace."""
    import shutil

    endpoints = tmp_path / "endpoints"
    for seed in (0, 1):
        (endpoints / f"seed_{seed}").mkdir(parents=True)
        for name in ("test_logprobs.pt", "val_logprobs.pt"):
            shutil.copy(workspace / f"data/endpoints/seed_{seed}" / name, endpoints / f"seed_{seed}" / name)
    return endpoints


def test_compare_names_an_endpoint_predictions_file_it_cannot_use(workspace, tmp_path, monkeypatch):
    """An endpoint's test_logprobs.pt without labels, of another format, or whose log-probabilities are not one
    row per label: an error naming the file and the stage that writes it, no traceback, nothing written."""
    endpoints = _copy_predictions(workspace, tmp_path)
    snapshots = ("--fge", workspace / "data/fge/snapshots.pt", "--sse", workspace / "data/sse/snapshots.pt")
    bad = endpoints / "seed_1/test_logprobs.pt"
    good = torch.load(bad, weights_only=True)
    for blob, says in (
        ({"logprobs": good["logprobs"]}, "has no labels tensor"),
        (torch.zeros(3), "has no logprobs or labels tensor"),
        ({"logprobs": good["logprobs"][1:], "labels": good["labels"]}, f"for {len(good['labels'])} labels"),
    ):
        torch.save(blob, bad)
        out = _bad(tmp_path, monkeypatch, compare, "--endpoints", endpoints, *snapshots)
        assert "seed_1/test_logprobs.pt" in out and says in out and "train_endpoint" in out, out
        assert "Traceback" not in out and not (tmp_path / "metrics/compare.json").exists()


def test_path_ensembles_names_a_curve_predictions_file_of_another_size(workspace, tmp_path, monkeypatch):
    """eval_curve's curve.pt whose predictions are of fewer test points than its labels, or not one row per t:
    an error naming the file and eval_curve, before any network is evaluated."""
    import shutil

    curve_eval = tmp_path / "curve_eval"
    shutil.copytree(workspace / "data/curve_eval", curve_eval)
    good = torch.load(curve_eval / "curve.pt", weights_only=True)
    args = ("--prepared", workspace / "data/prepared", "--curve", workspace / "data/curve", "--curve-eval", curve_eval)
    fewer_points, fewer_t = dict(logprobs=good["logprobs"][:, 1:]), dict(t=good["t"][1:])
    for change, says in ((fewer_points, f"for {len(good['labels'])} labels"), (fewer_t, "points t")):
        torch.save(dict(good, **change), curve_eval / "curve.pt")
        out = _bad(tmp_path, monkeypatch, path_ensembles, *args, "--device", "cpu")
        assert "curve_eval/curve.pt" in out and says in out and "eval_curve" in out, out
        assert "Traceback" not in out and not (tmp_path / "metrics/path_ensembles.json").exists()
