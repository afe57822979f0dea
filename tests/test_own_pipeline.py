"""The own/ pipeline (your own model, data and checkpoints), shipped as a template (own/dvc.template.yaml) that a
user copies to own/dvc.yaml: its stages list the code, params and outputs of the root pipeline's same stages;
`dvc repro` in own/ on a tiny image folder joins two checkpoints of the user's own (a plain state dict and a
modeconn checkpoint), runs FGE from one and writes the headline, then reruns nothing. And FGE's start
network: each run's network measured before any FGE step (modeconn.snapshots.start_scores / start_summary)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from modeconn import ensemble, schedules
from modeconn.data import Loader, load_prepared
from modeconn.fge import cycle_iterations, fge_schedule
from modeconn.io import save_checkpoint
from modeconn.models import from_spec, model_spec
from modeconn.snapshots import RunPlan, start_scores, start_summary, train_runs
from modeconn.train import make_sgd, predict

from .stage_utils import DVC, ROOT, init_repo, tiny_params, tool_env
from .test_pipeline import ran, run

OWN_STAGES = {"params", "prepare", "fit_curve", "eval_curve", "fge", "barriers", "curvature", "simplex", "headline"}
TEMPLATE = "dvc.template.yaml"  # in own/; the user's copy is own/dvc.yaml


def _stages(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["stages"]


def _names(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


# ------------------------------------------------------------------ own/dvc.yaml against dvc.yaml


def test_own_stages_list_what_the_root_stages_list():
    """Each own/ stage reads the code the root's same stage reads (paths from own/), the user's checkpoints
    instead of data/endpoints, the image folder (prepare), and ``model`` beside the root's params where a plain
    state dict is loaded into it; its outputs, metrics and plots are the root's."""
    root, own = _stages(ROOT / "dvc.yaml"), _stages(ROOT / "own" / TEMPLATE)
    assert set(own) == OWN_STAGES
    local = ("data/", "metrics/")
    for name in OWN_STAGES - {"headline"}:  # the root's headline is the report's
        r, o = root[name].get("do", root[name]), own[name].get("do", own[name])  # simplex: one per seed / file
        want = [d if d.startswith(local) else f"../{d}" for d in r["deps"]]
        want = ["checkpoints" if d in ("data/endpoints", "data/endpoints/seed_${item}") else d for d in want]
        if name == "prepare":
            want = ["${data.imagefolder.root}", *want]
        assert sorted(o["deps"]) == sorted(want), name
        extra = ["model"] if name in ("fit_curve", "fge", "barriers") else []
        extra = ["model", "simplex.start_files"] if name == "simplex" else extra
        assert o["params"] == extra + r["params"], name
        for key in ("outs", "metrics", "plots"):
            assert o.get(key) == r.get(key), (name, key)
        assert o["cmd"].startswith("PYTHONPATH=.. python -m stages."), name  # the project's stages, from own/


# ------------------------------------------------------------------ FGE: the network a run starts from


def _tiny_runs(epochs: int = 1):
    torch.manual_seed(0)
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    test_x, test_y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    val_x, val_y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    train_b = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 48, 8)]
    train_b = type("B", (list,), {"generator": torch.Generator()})(train_b)
    test_b, val_b = [(test_x, test_y)], [(val_x, val_y)]

    def plan(seed: int) -> RunPlan:
        def make():
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
            lr_at, is_snap = fge_schedule(2, 0.5, 0.05)
            return model, make_sgd(model.parameters(), 0.5, 0.9, 0.0), train_b, lr_at, is_snap

        return RunPlan(seed, 3, make)

    return [plan(0), plan(1)], test_b, test_y, val_b, val_y


def test_fge_runs_record_their_start_network_before_any_step():
    plans, test_b, test_y, val_b, val_y = _tiny_runs()
    records, _ = train_runs(plans, 1, test_b, test_y, val_batches=val_b, val_labels=val_y, evaluate_start=True)
    for plan, rec in zip(plans, records):
        model = plan.make()[0].eval()  # the same network, untrained: evaluated here by hand
        with torch.no_grad():
            lp = torch.log_softmax(model(test_b[0][0]), 1)
            val_lp = torch.log_softmax(model(val_b[0][0]), 1)
        start = rec["start"]
        assert start["accuracy"] == pytest.approx((lp.argmax(1) == test_y).float().mean().item())
        assert start["nll"] == pytest.approx(nn.functional.nll_loss(lp, test_y).item(), rel=1e-5)
        assert start["val_accuracy"] == pytest.approx((val_lp.argmax(1) == val_y).float().mean().item())
        assert start["val_nll"] == pytest.approx(nn.functional.nll_loss(val_lp, val_y).item(), rel=1e-5)
        first = rec["snapshots"][0]["logprobs"]  # after FGE steps at lr 0.5: another network
        assert not torch.allclose(first, lp)
    summary = start_summary(records)
    for key in ("accuracy", "nll", "ece", "val_accuracy", "val_nll"):
        assert summary[f"start_{key}"] == pytest.approx((records[0]["start"][key] + records[1]["start"][key]) / 2)
    off, _ = train_runs(plans, 1, test_b, test_y)  # off by default (SSE starts from scratch)
    assert "start" not in off[0] and start_summary(off) == {}


def test_start_scores_leave_the_model_training_and_skip_val_without_labels():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    s = start_scores(model, [(x, y)], y)
    assert model.training and set(s) == {"accuracy", "nll", "ece"}
    assert start_summary([{"start": {"accuracy": 0.5, "nll": 1.0}}, {"start": None}]) == {
        "start_accuracy": 0.5,
        "start_nll": 1.0,
    }


# ------------------------------------------------------------------ `dvc repro` in own/

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
SIZE = 16
ARGS = {"width": 4, "fc_width": 16, "batch_norm": True}


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _drop_stale(own: Path) -> None:
    """Anything a run in the working tree left in own/ (outputs, the lock, the user's checkpoints and their .dvc)."""
    for stale in ("data", "metrics", "dvc.yaml", "dvc.lock", "checkpoints", "checkpoints.dvc", ".gitignore"):
        path = own / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _own_params() -> dict:
    data = {"name": "imagefolder", "raw_dir": "data/raw", "val_size": 6, "augment": "none", "seed": 0}
    return tiny_params(
        data={**data, "download": False, "imagefolder": {"root": "data/raw/mine", "size": SIZE}},
        model={"name": "convfc", "args": ARGS},
        curve__epochs=1,
        curve__batch_size=6,
        curve__endpoint_files=["checkpoints/a.pt", "checkpoints/b.pt"],
        fge__start_files=["checkpoints/a.pt"],
        barriers__files=["checkpoints/a.pt", "checkpoints/b.pt"],
        fge__start_epoch=1,
        fge__epochs=2,
        fge__cycle=0.5,
        fge__batch_size=6,
        eval__train_samples=0,
        simplex__seeds=[0],
        simplex__start_files=["checkpoints/a.pt"],
        simplex__start_epoch=1,
        simplex__batch_size=6,
    )


@pytest.mark.slow
def test_dvc_repro_in_own_joins_your_checkpoints_then_reruns_nothing(tmp_path):
    repo = tmp_path / "repo"
    for name in ("modeconn", "stages", "own"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _drop_stale(repo / "own")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    own = repo / "own"
    shutil.copy(own / TEMPLATE, own / "dvc.yaml")
    (own / "checkpoints").mkdir()
    (own / "params.yaml").write_text(yaml.safe_dump(_own_params(), sort_keys=False))
    _image_folder(own / "data/raw/mine")
    spec = model_spec("convfc", 3, 3, SIZE, ARGS)  # what the model section builds on this data
    torch.manual_seed(10)
    a = from_spec(spec).state_dict()
    torch.save(a, own / "checkpoints/a.pt")  # a plain state dict
    torch.manual_seed(11)
    b = from_spec(spec).state_dict()
    save_checkpoint(own / "checkpoints/b.pt", spec, b)  # a modeconn checkpoint
    dvc = [DVC]
    init_repo(repo, run, "own project")

    assert ran(run(dvc + ["repro"], own)) == OWN_STAGES - {"simplex"} | {"simplex@0"}
    lock = (own / "dvc.lock").read_text()
    assert "../modeconn/fge.py" in lock and "checkpoints" in lock

    # The curve joins the two files: its ends are their weights.
    from modeconn.curves import load_curve

    curve, blob = load_curve(own / "data/curve/curve.pt", from_spec)
    assert blob["endpoints"] == ["checkpoints/a.pt", "checkpoints/b.pt"] and blob["spec"] == spec
    for t, w in ((0.0, a), (1.0, b)):
        state = curve.state_at(t)
        for k, v in w.items():
            if v.is_floating_point() and "running" not in k:
                assert torch.equal(state[k], v), (t, k)
    assert json.loads((own / "metrics/curve.json").read_text())["curve"]["test_error"]["max"] <= 1

    # FGE from the start file: its snapshots, and the start network's test accuracy/NLL measured before any step.
    snaps = torch.load(own / "data/fge/snapshots.pt", weights_only=True)
    (record,) = snaps["runs"]
    cycle = cycle_iterations(0.5, 18 // 6)  # 18 training images in batches of 6: 3 iterations per epoch
    want = [i for i in range(1, 2 * 3 + 1) if schedules.fge_is_snapshot(i, cycle)]
    assert [s["iteration"] for s in record["snapshots"]] == want and record["cost"] == 3
    data = load_prepared(own / "data/prepared", "cpu")
    assert data.info.num_classes == 3 and data.info.channels == 3 and data.val is not None
    net = from_spec(spec)
    net.load_state_dict(a)
    lp, y = predict(net.eval(), Loader(data.test, data.info, 64, train=False))
    metrics = json.loads((own / "metrics/fge.json").read_text())
    assert metrics["start_accuracy"] == pytest.approx(ensemble.accuracy(lp, y))
    assert metrics["start_nll"] == pytest.approx(ensemble.nll(lp, y), rel=1e-5)
    assert "start_val_accuracy" in metrics and "swa_accuracy" in metrics
    headline = json.loads((own / "metrics/headline.json").read_text())  # the numbers `dvc exp show` lists
    assert headline["fge"]["start_accuracy"] == metrics["start_accuracy"]
    curve_max = json.loads((own / "metrics/curve.json").read_text())["curve"]["test_error"]["max"]
    assert headline["curve_max_test_error"] == curve_max
    simplex = json.loads((own / "metrics/simplex/seed_0.json").read_text())  # from checkpoints/a.pt
    assert headline["simplex_interior_test_error"] == simplex["interior"]["test_error"]["mean"]
    info = json.loads((own / "metrics/fge.run.json").read_text())
    assert info["start"]["0"]["accuracy"] == metrics["start_accuracy"]

    # Nothing changed: nothing reruns; a file added to checkpoints/ reruns the stages that read it, not prepare.
    assert ran(run(dvc + ["repro"], own)) == set()
    torch.manual_seed(12)
    torch.save(from_spec(spec).state_dict(), own / "checkpoints/c.pt")
    again = ran(run(dvc + ["repro"], own))
    assert {"fit_curve", "fge", "simplex@0"} <= again and "prepare" not in again


def _own_steps_doc() -> str:
    """Where the own/ steps are documented: README's section "Your own model, data and checkpoints" and
    docs/own.md (where it exists)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your own model, data and checkpoints") :]
    page = ROOT / "docs/own.md"
    return section[: section.index("\n## ")] + (page.read_text() if page.is_file() else "")


@pytest.mark.slow
def test_the_readmes_steps_on_two_classes_of_twenty_images(tmp_path):
    """The documented own/ steps (README "Your own model, data and checkpoints", docs/own.md), step by step,
    on 2 classes × 20 images and own/params.yaml as shipped (only the model changed, to a small one of the
    user's): the template copied to own/dvc.yaml; `dvc add checkpoints` works (own/checkpoints is not in git);
    the defaults made for big data stop with errors that name the key (data.val_size, then the
    batch sizes), no traceback; with the small-data values own/params.yaml's comments give, `dvc repro` runs."""
    repo = tmp_path / "repo"
    for name in ("modeconn", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    tracked = subprocess.run(["git", "ls-files", "own"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():  # own/ as a clone has it: what git tracks, nothing a run left there
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    own = repo / "own"
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    init_repo(repo, run, "a clone")
    assert not (own / "checkpoints").exists(), "own/checkpoints must not be in git: `dvc add checkpoints` fails"

    params = yaml.safe_load((own / "params.yaml").read_text())
    root = own / params["data"]["imagefolder"]["root"]
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 5)):
        for c, colour in enumerate(COLOURS[:2]):
            (root / split / f"class_{c}").mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")
    params["model"] = {"name": "convfc", "args": ARGS}
    spec = model_spec("convfc", 2, 3, params["data"]["imagefolder"]["size"], ARGS)
    (own / "checkpoints").mkdir()
    for seed, name in ((10, "a.pt"), (11, "b.pt")):  # plain state dicts of the model section's network
        torch.manual_seed(seed)
        torch.save(from_spec(spec).state_dict(), own / "checkpoints" / name)
    assert params["curve"]["endpoint_files"] == ["checkpoints/a.pt", "checkpoints/b.pt"]
    assert params["fge"]["start_files"] == ["checkpoints/a.pt"]

    def repro(**changes) -> tuple[int, str]:
        for key, value in changes.items():
            section, name = key.split("__")
            params[section][name] = value
        (own / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run([DVC, "repro"], cwd=own, env=tool_env(), capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr

    readme = _own_steps_doc()
    steps = "\n".join(re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL))
    add = re.search(r"^cd own && cp (\S+) (\S+) && dvc add ([^&\n]+) && dvc repro$", steps, re.MULTILINE)
    commit = re.search(r"^git add (.+)$", steps, re.MULTILINE)
    assert add and commit, (
        f"The documented own/ steps are no longer `cd own && cp … && dvc add … && dvc repro`, `git add …`:\n{steps}"
    )
    assert not (own / "dvc.yaml").exists() and add[1] == TEMPLATE and add[2] == "dvc.yaml", add[0]
    run(["cp", add[1], add[2]], own)  # the documented steps: the template becomes the user's pipeline,
    run([DVC, "add", *add[3].split()], own)  # checkpoints and images, both deps of own/, cached
    code, out = repro()
    assert code != 0 and "val_size=5000 must be smaller than the 40 training images" in out, out
    assert "Traceback" not in out
    code, out = repro(data__val_size=8)  # 32 training images left
    said = re.search(r"(curve|fge|simplex)\.batch_size 128 is larger than the 32 training images", out)
    assert code != 0 and said and "Traceback" not in out, out
    code, out = repro(curve__batch_size=8, fge__batch_size=8, simplex__batch_size=8)
    assert code == 0, out
    stages = {name.split("@")[0] for name in ran(out)}  # simplex@0: a foreach stage
    assert stages | {"prepare"} == OWN_STAGES  # prepare ran (and succeeded) in the run before
    info = json.loads((own / "metrics/fge.run.json").read_text())
    assert info["snapshots_per_run"] == {"0": 4} and info["warnings"] == {}  # 4 iterations per epoch, cycle 2
    assert json.loads((own / "metrics/curve.json").read_text())["curve"]["test_error"]["max"] <= 1
    assert ran(run([DVC, "repro"], own)) == set()

    # The documented `git add` list leaves nothing of the run untracked (but params.yaml, which the user edited);
    # `dvc commit -f` as the steps say: the failed runs above took prepare's output out of data/.gitignore.
    assert "`dvc commit -f`" in readme
    run([DVC, "commit", "-f"], own)
    run(["git", "add", *commit[1].split()], own)
    status = run(["git", "status", "--porcelain", "--untracked-files=all", "."], own).splitlines()
    left = [line for line in status if line[1] != " " and not line.endswith("own/params.yaml")]
    assert not left, f"The documented `git add {commit[1]}` leaves these out:\n" + "\n".join(left)
