"""The paper-scale presets: each validates and merges into params.yaml, the GPU-time estimate, the command's
errors; and (slow) every preset's model through every stage on the CPU with the GPU settings forced."""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from stages import (
    compare,
    eval_curve,
    fge,
    fit_curve,
    path_ensembles,
    plane,
    prepare,
    sse,
    train_endpoint,
)
from stages.kit.config import SECTIONS, read_sections
from stages.kit.launch import PREEMPTED_EXIT
from tools import preset

from .stage_utils import ROOT, invoke

PRESETS = {
    "vgg16-cifar10": ("cifar10", "vgg16", {}),
    "vgg16-cifar100": ("cifar100", "vgg16", {}),
    "preresnet164-cifar10": ("cifar10", "preresnet", {"depth": 164}),
    "preresnet164-cifar100": ("cifar100", "preresnet", {"depth": 164}),
    "wrn28x10-cifar10": ("cifar10", "wideresnet", {"depth": 28, "widen_factor": 10}),
    "wrn28x10-cifar100": ("cifar100", "wideresnet", {"depth": 28, "widen_factor": 10}),
}
NAMES = sorted(PRESETS)  # the CIFAR presets (Tables 1-2)
IMAGENET = "resnet50-imagenet"  # the ImageNet FGE run (Sec. 5.4), from a local weights file


@pytest.fixture
def params_file(tmp_path) -> Path:
    """A copy of the repository's params.yaml."""
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def apply(name: str, path: Path, *extra: str):
    return invoke(preset, "apply", name, "--params", path, *extra)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_seven_presets_are_listed():
    assert preset.available() == sorted([*NAMES, IMAGENET])
    r = invoke(preset, "list")
    assert r.exit_code == 0, r.output
    for name in [*NAMES, IMAGENET]:
        assert name in r.output
    assert "not measurements" in r.output and " h" in r.output


@pytest.mark.parametrize("name", NAMES)
def test_preset_validates_and_merges(name, params_file):
    before = load(params_file)
    r = apply(name, params_file)
    assert r.exit_code == 0, r.output
    cfg = dict(zip(SECTIONS, read_sections(params_file, *SECTIONS)))  # every section validates
    after = load(params_file)
    dataset, model, args = PRESETS[name]
    assert (cfg["data"].name, cfg["model"].name, cfg["model"].args) == (dataset, model, args)
    assert cfg["data"].augment == "crop_flip" and cfg["data"].val_size == 5000 and cfg["data"].download
    # Keys the preset does not set stay, values and comments.
    for key in ("raw_dir", "seed"):
        assert after["data"][key] == before["data"][key]
    assert after["curve"]["seed"] == before["curve"]["seed"] and after["fge"]["seed"] == before["fge"]["seed"]
    assert after["path_ensembles"] == before["path_ensembles"]
    text = params_file.read_text()
    assert "# seed of the validation split" in text and f"# preset {name}" in text
    assert set(after) == set(before)
    # The paper's protocol (PAPER.md sections 2-3), whatever the model.
    tr, cu, fg, ss = cfg["train"], cfg["curve"], cfg["fge"], cfg["sse"]
    B = tr.epochs
    assert B == (150 if model == "preresnet" else 200) and tr.batch_size == 128 and tr.seeds == (0, 1, 2)
    assert (cu.type, cu.num_bends, cu.endpoints, cu.init) == ("bezier", 3, (0, 1), "linear")
    assert (cu.epochs, cu.lr) == ((600, 0.015) if model == "vgg16" else (200, 0.03))
    assert fg.start_epoch == 0.8 * B and fg.start_epoch in tr.save_epochs and fg.start_epoch + fg.epochs == B
    assert fg.cycle == 2 and fg.start_seeds == tr.seeds
    assert ss.epochs == 3 * B and ss.cycles % 3 == 0  # SSE over 3B, the same number of cycles in each B
    assert cfg["eval"].num_points == 61 and cfg["plane"].grid_points == 21
    assert cfg["compare"].budgets == (1, 2, 3)


def test_presets_apply_over_one_another(params_file, tmp_path):
    """Every preset sets the same keys: B over A gives exactly the file of B alone."""
    alone = tmp_path / "alone.yaml"
    shutil.copy(params_file, alone)
    assert apply("wrn28x10-cifar100", params_file).exit_code == 0
    assert apply("vgg16-cifar10", params_file).exit_code == 0
    assert apply("vgg16-cifar10", alone).exit_code == 0
    assert params_file.read_text() == alone.read_text()
    assert params_file.read_text().count("# Preset applied:") == 1


def test_layout_survives_a_replaced_block_and_a_new_key(params_file):
    """model.args (a block mapping) becomes one line; a key the file lacked is added; blank lines stay."""
    text = params_file.read_text()
    assert re.search(r"\n  args:[^\n]*\n    \w", text) and "\n  download: true" in text  # block args; download last
    params_file.write_text("\n".join(line for line in text.split("\n") if not line.startswith("  download:")))
    assert apply("vgg16-cifar10", params_file).exit_code == 0
    after = params_file.read_text()
    examples = r"(  # [^\n]*\n)*"  # params.yaml's commented-out examples after the key stay with it
    assert re.search(r"  args: \{\}                   # preset vgg16-cifar10\n" + examples + r"\ntrain:", after)
    assert re.search(r"  download: true             # preset vgg16-cifar10\n" + examples + r"\nmodel:", after)
    assert load(params_file)["data"]["download"] is True


def test_merge_replaces_values_whole_and_keeps_the_rest():
    params = {"model": {"name": "convfc", "args": {"width": 8, "fc_width": 128}}, "train": {"epochs": 6, "lr": 0.05}}
    merged, changes = preset.merge(params, {"model": {"name": "preresnet", "args": {"depth": 164}}})
    assert merged["model"] == {"name": "preresnet", "args": {"depth": 164}}  # args replaced, not merged
    assert merged["train"] == {"epochs": 6, "lr": 0.05}
    assert params["model"]["args"] == {"width": 8, "fc_width": 128}  # the input is not modified
    assert [c[0] for c in changes] == ["model.name", "model.args"]


@pytest.mark.parametrize("name", NAMES)
def test_estimate_is_positive_and_monotone_in_epochs(name):
    params = preset._plain(preset.load_preset(name))
    rows = preset.estimate(params)
    total = preset.total_seconds(rows)
    assert total is not None and total > 0
    for r in rows:
        assert r.seconds is not None and r.seconds >= 0
        assert (r.seconds > 0) == (r.stage not in ("prepare", "compare", "report"))
    for section, key in [
        ("train", "epochs"),
        ("curve", "epochs"),
        ("fge", "epochs"),
        ("sse", "epochs"),
        ("eval", "num_points"),
        ("plane", "grid_points"),
    ]:
        more = copy.deepcopy(params)
        more[section][key] += 10
        assert preset.total_seconds(preset.estimate(more)) > total, f"{section}.{key}"
    assert preset.gpu_seconds(0, 6.0) == 0 and preset.gpu_seconds(2, 6.0) > preset.gpu_seconds(1, 6.0) > 0
    assert preset.total_seconds(preset.estimate({**params, "model": {"name": "convfc"}})) is None  # no figure


def test_apply_prints_the_estimate_and_its_assumption(params_file):
    r = apply("preresnet164-cifar10", params_file)
    assert r.exit_code == 0, r.output
    for text in ("train_endpoint", "fit_curve", "plane", "est. GPU time", "not measured", "A100", "total"):
        assert text in r.output, text


def test_unknown_preset_lists_the_names_and_leaves_the_file(params_file):
    before = params_file.read_bytes()
    r = apply("resnet152-imagenet", params_file)
    assert r.exit_code == 1
    assert "unknown preset 'resnet152-imagenet'" in r.output
    for name in NAMES:
        assert name in r.output
    assert params_file.read_bytes() == before


def test_dry_run_leaves_the_file(params_file):
    before, mtime = params_file.read_bytes(), params_file.stat().st_mtime_ns
    r = apply("vgg16-cifar100", params_file, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "dry run" in r.output and "est. GPU time" in r.output
    assert params_file.read_bytes() == before and params_file.stat().st_mtime_ns == mtime


def test_an_invalid_result_is_not_written(params_file):
    """A params file the preset cannot fix (an unknown key elsewhere) stays as it was; no temp file is left."""
    params_file.write_text(params_file.read_text().replace("plane:", "plane:\n  colour: red", 1))
    before = params_file.read_bytes()
    r = apply("vgg16-cifar10", params_file)
    assert r.exit_code == 1 and "plane.colour" in r.output
    assert str(params_file) in r.output.replace("\n", "") and ".tmp" not in r.output  # the user's file, named
    assert params_file.read_bytes() == before
    assert sorted(p.name for p in params_file.parent.iterdir()) == ["params.yaml"]


def test_missing_params_file(tmp_path):
    r = apply("vgg16-cifar10", tmp_path / "nope.yaml")
    assert r.exit_code == 1 and "not found" in r.output


# ------------------------------------------------------------------ every preset's model through every stage


def shrink_for_cpu(params: dict, num_classes: int) -> dict:
    """The preset's params at a size a 2-core CPU runs in seconds; the model (and its args) stay the preset's."""
    p = copy.deepcopy(params)
    # 8 training images in 2 batches of 4 (4 held out), 4 test images: WRN-28-10 (36M parameters) still takes
    # most of a minute on 2 cores, in weight-space arithmetic (curve, plane) and checkpoint writes.
    synthetic = {"n_train": 12, "n_test": 4, "num_classes": num_classes, "channels": 3, "size": 32, "seed": 0}
    p["data"].update(name="synthetic", val_size=4, download=False, synthetic=synthetic)
    p["train"].update(seeds=[0, 1], epochs=1, save_epochs=[1], batch_size=4)
    p["curve"].update(epochs=1, batch_size=4)
    p["eval"].update(num_points=2, batch_size=4, bn_samples=4, train_samples=4)
    p["fge"].update(start_seeds=[0], start_epoch=1, epochs=1, cycle=0.5, batch_size=4)
    p["sse"].update(epochs=1, cycles=1, batch_size=4)
    p["compare"].update(budgets=[1])
    p["plane"].update(grid_points=2, batch_size=4, bn_samples=4, train_samples=4, test_samples=4)
    p["path_ensembles"].update(batch_size=4, bn_samples=4)
    return p


GPU_SETTINGS = ("--device", "cpu", "--precision", "bf16", "--channels-last", "1")
STEPS = [  # (stage, its arguments, its main output), in dvc.yaml's order
    (prepare, (), "data/prepared/data.pt"),
    (train_endpoint, ("--seed", 0), "data/endpoints/seed_0/model.pt"),
    (train_endpoint, ("--seed", 1), "data/endpoints/seed_1/model.pt"),
    (fit_curve, (), "data/curve/curve.pt"),
    (eval_curve, (), "metrics/curve.json"),
    (fge, (), "data/fge/snapshots.pt"),
    (sse, (), "data/sse/snapshots.pt"),
    (compare, (), "metrics/compare.json"),
    (plane, (), "metrics/plane.json"),
    (path_ensembles, (), "metrics/path_ensembles.json"),
]


RESUMES = {  # the training stages' run files; resumed (2 epochs, stopped after 1) for RESUMED only
    "train_endpoint": "metrics/endpoints/seed_{seed}.run.json",
    "fit_curve": "metrics/curve_train.run.json",
    "fge": "metrics/fge.run.json",
    "sse": "metrics/sse.run.json",
}
RESUMED = "vgg16-cifar10"  # one preset: resuming every preset would double this (slow) test's time


def two_epochs(p: dict) -> None:
    p["train"].update(epochs=2, save_epochs=[1])
    p["curve"].update(epochs=2)
    p["fge"].update(start_epoch=1, epochs=2)
    p["sse"].update(epochs=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_preset_runs_every_stage_with_gpu_settings_on_cpu(name, tmp_path, monkeypatch):
    """VGG-16, PreResNet-164 and WRN-28-10 through every stage under bf16 autocast and channels_last; for
    RESUMED, each training stage is stopped after its first epoch (MODECONN_STOP_AFTER_EPOCHS) and resumed."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    r = apply(name, Path("params.yaml"))
    assert r.exit_code == 0, r.output
    applied = load(Path("params.yaml"))
    num_classes = 100 if applied["data"]["name"] == "cifar100" else 10
    small = shrink_for_cpu(applied, num_classes)
    if name.endswith("-cifar100"):  # the -cifar10 twin of the same architecture runs the weight matching
        small["eval"]["align"] = False
    if name == RESUMED:
        two_epochs(small)
    Path("params.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    assert (small["model"]["name"], small["model"]["args"]) == PRESETS[name][1:]
    timings = {}
    for module, args, output in STEPS:
        stage = module.__name__.rsplit(".", 1)[-1]
        runtime = () if stage in ("prepare", "compare") else GPU_SETTINGS
        t0 = time.perf_counter()
        if name == RESUMED and stage in RESUMES:
            monkeypatch.setenv("MODECONN_STOP_AFTER_EPOCHS", "1")
            r = invoke(module, *args, *runtime)
            assert r.exit_code == PREEMPTED_EXIT, f"{stage} {args} not stopped after epoch 1: {r.output}"
            monkeypatch.delenv("MODECONN_STOP_AFTER_EPOCHS")
        r = invoke(module, *args, *runtime)
        timings[f"{stage} {' '.join(map(str, args))}".strip()] = round(time.perf_counter() - t0, 1)
        assert r.exit_code == 0, f"{stage} {args}: {r.output}"
        assert Path(output).is_file(), f"{stage} did not write {output}"
        if name == RESUMED and stage in RESUMES:
            run = json.loads(Path(RESUMES[stage].format(seed=args[-1] if args else 0)).read_text())
            assert run["resumed_after_epoch"] == 1, f"{stage} {args} did not resume: {run}"
    run = json.loads(Path("metrics/endpoints/seed_0.run.json").read_text())
    assert (run["precision"], run["channels_last"]) == ("bf16", True)
    print(f"{name}: {timings}")


# ------------------------------------------------------------------ the ImageNet preset (FGE from a pretrained net)


def test_imagenet_preset_is_the_papers_fge_run(params_file):
    raw = preset._plain(preset.load_preset(IMAGENET))
    assert raw["model"] == {"name": "torchvision/resnet50", "args": {}}
    fg = raw["fge"]
    assert fg["epochs"] == 5 and fg["start_files"] == ["checkpoints/resnet50.pth"] and fg["cycle"] == 2
    folder = raw["data"]["imagefolder"]
    assert raw["data"]["name"] == "imagefolder" and (folder["size"], folder["resize"]) == (224, 256)
    assert "23.87%" in preset_path_text(IMAGENET) and "23.31%" in preset_path_text(IMAGENET)
    # A CIFAR preset over it clears the start files (every preset sets fge.start_files).
    text = params_file.read_text()
    params_file.write_text(text.replace("fge:\n", "fge:\n  start_files: [data/user/x.pt]\n", 1))
    assert apply("vgg16-cifar10", params_file).exit_code == 0
    assert load(params_file)["fge"]["start_files"] == []


def preset_path_text(name: str) -> str:
    return preset.preset_path(name).read_text()


@pytest.mark.slow
def test_imagenet_preset_runs_on_a_tiny_image_folder(tmp_path, monkeypatch):
    """The ImageNet preset through prepare and fge on CPU: a tiny image folder of PNG/JPEG files, a small
    torchvision model (resnet18 at 32 px) from a local ImageNet-shaped (1000-class) weights file."""
    from .test_own_models import write_image_folder

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    # The preset validates the folder, so the folder must be where it says before apply.
    write_image_folder(tmp_path / "data/raw/imagenet")
    r = apply(IMAGENET, Path("params.yaml"))
    assert r.exit_code == 0, r.output
    p = load(Path("params.yaml"))
    assert p["fge"]["start_files"] == ["checkpoints/resnet50.pth"] and p["model"]["name"] == "torchvision/resnet50"
    import torch

    from modeconn.models import create_model

    Path("checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(create_model("torchvision/resnet18", 1000).state_dict(), "checkpoints/resnet50.pth")
    p["model"]["name"] = "torchvision/resnet18"  # small enough for a CPU test
    p["data"]["imagefolder"].update(size=32, resize=36, max_per_class=0)
    p["data"]["val_size"] = 3
    p["fge"].update(epochs=1, cycle=0.5, batch_size=4)
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = invoke(prepare)
    assert r.exit_code == 0, r.output
    assert "3 classes" in r.output
    r = invoke(fge, *GPU_SETTINGS)
    assert r.exit_code == 0, r.output
    assert "re-initialised" in r.output  # the 1000-class head, replaced by a fresh 3-class one
    summary = json.loads(Path("metrics/fge.json").read_text())
    assert 0 <= summary["ensemble_accuracy"] <= 1
    snaps = torch.load("data/fge/snapshots.pt", weights_only=True)
    assert len(snaps["runs"]) == 1 and snaps["labels"].tolist() == [0, 0, 1, 1, 2, 2]
