"""Your own model, data and checkpoints: torchvision/timm models by name, weights from a local file (a new
classifier head), image folders, and curve / FGE stages started from checkpoint files of the user's own."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from modeconn.data import channel_stats, load_prepared, prepare
from modeconn.errors import ConfigError
from modeconn.io import load_checkpoint, save_checkpoint
from modeconn.models import create_model, from_spec, load_weights, model_spec, read_weights
from stages import fge, fit_curve
from stages import prepare as prepare_stage
from stages.kit.config import DataConfig, FgeConfig, ModelConfig, section
from stages.kit.records import seq

from .stage_utils import invoke, tiny_params

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def write_image_folder(root: Path, per_class: dict[str, int] | None = None, test: str = "val") -> Path:
    """A tiny ImageFolder: each class a solid colour plus noise, 40x48 images, PNG and JPEG mixed."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), (test, 2)):
        for cls, colour in COLOURS.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range((per_class or {}).get(split, n)):
                pixels = np.clip(np.array(colour) + rng.normal(0, 10, (40, 48, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(folder / f"{i}.{ext}")
    return root


# ------------------------------------------------------------------ models by name


@pytest.mark.parametrize("name", ["torchvision/resnet18", "torchvision/mobilenet_v3_small", "timm/resnet18"])
def test_external_models_build_and_round_trip_through_their_spec(name):
    spec = model_spec(name, 3, 3, 32, {})
    model = from_spec(spec)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    again = from_spec(spec)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
    again.load_state_dict(model.state_dict())  # a checkpoint of it rebuilds


def test_model_args_pass_through_and_timm_takes_the_data_channels():
    zero = create_model("torchvision/resnet18", 5, zero_init_residual=True)
    assert float(zero.layer1[0].bn2.weight.detach().abs().sum()) == 0 and zero.fc.out_features == 5
    assert create_model("torchvision/wide_resnet50_2", 5).layer1[0].conv1.out_channels == 128  # a real builder
    gray = create_model("timm/resnet18", 4, in_channels=1, input_size=28, drop_rate=0.1)
    assert gray.conv1.in_channels == 1 and gray(torch.randn(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("torchvision/resnet18", {"weights": "IMAGENET1K_V1"}, "never downloads weights"),
        ("torchvision/resnet18", {"pretrained": True}, "pass it as a file"),
        ("timm/resnet18", {"pretrained": True}, "never downloads weights"),
        ("timm/resnet18", {"in_chans": 1}, "set from the data"),
        ("torchvision/resnet18", {"colour": 1}, "unexpected keyword argument 'colour'"),
        ("torchvision/resnet19", {}, "list_models"),
        ("timm/resnet19x", {}, "timm.list_models"),
        ("keras/resnet18", {}, "torchvision/<builder>"),
    ],
)
def test_bad_external_models_are_clear_errors(name, args, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, 3, **args)


def test_torchvision_needs_three_channels():
    with pytest.raises(ConfigError, match="3-channel"):
        create_model("torchvision/resnet18", 3, in_channels=1)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match="pip install timm"):
        create_model("timm/resnet18", 3)


# ------------------------------------------------------------------ weights from a local file


def test_weights_with_another_head_load_all_but_the_head(tmp_path, caplog):
    torch.manual_seed(0)
    imagenet = create_model("torchvision/resnet18", 1000)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    torch.manual_seed(1)
    model = create_model("torchvision/resnet18", 3)
    fresh_head = model.fc.weight.detach().clone()
    fresh = load_weights(model, read_weights(tmp_path / "r18.pth"), "r18.pth")
    assert fresh == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, fresh_head)  # the builder's init, kept
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, imagenet.state_dict()[k]), k
    assert "re-initialised" in caplog.text and "1000" in caplog.text


def test_weights_that_do_not_fit_are_errors(tmp_path):
    r18 = create_model("torchvision/resnet18", 3)
    with pytest.raises(ConfigError, match="r34.pth does not fit the model: 96 unexpected"):
        load_weights(r18, create_model("torchvision/resnet34", 3).state_dict(), "r34.pth")
    with pytest.raises(ConfigError, match="missing"):
        load_weights(create_model("torchvision/resnet34", 3), r18.state_dict(), "r18.pth")
    wide = dict(r18.state_dict(), **{"conv1.weight": torch.zeros(32, 3, 7, 7)})
    with pytest.raises(ConfigError, match="another shape.*conv1.weight"):
        load_weights(r18, wide, "wide.pth")
    with pytest.raises(ConfigError, match="fine-tune"):  # a new head refused where it makes no sense
        load_weights(r18, create_model("torchvision/resnet18", 10).state_dict(), "x", new_head=False)


def test_read_weights_formats(tmp_path):
    net = create_model("convfc", 4, 1, 28, width=2, fc_width=8)
    state = net.state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.pt")
    save_checkpoint(tmp_path / "mc.pt", model_spec("convfc", 4, 1, 28, {"width": 2, "fc_width": 8}), state)
    for f in ("ddp.pt", "lightning.pt", "mc.pt"):
        got = read_weights(tmp_path / f)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state), f
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights file .*bad.pt"):
        read_weights(tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="not found"):
        read_weights(tmp_path / "none.pt")


def test_model_config_build_loads_model_weights(tmp_path):
    net = create_model("torchvision/resnet18", 1000)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    cfg = section({"model": {"name": "torchvision/resnet18", "weights": str(tmp_path / "w.pth")}}, "model", ModelConfig)
    from modeconn.data import DATASETS

    built = cfg.build(DATASETS["cifar10"])
    assert built.fc.out_features == 10 and torch.equal(built.conv1.weight, net.conv1.weight)


# ------------------------------------------------------------------ image folders


def test_image_folder_prepares_uint8_resized_and_cropped(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    opts = {"root": str(root), "size": 16, "resize": 20}
    prepared = prepare("imagefolder", tmp_path / "raw", tmp_path / "prep", val_size=3, imagefolder=opts)
    info = prepared.info
    assert (info.num_classes, info.channels, info.size) == (3, 3, 16)
    assert prepared.train.x.dtype == torch.uint8 and prepared.train.x.shape == (9, 3, 16, 16)
    assert prepared.test.x.shape == (6, 3, 16, 16) and len(prepared.val) == 3
    # Independent reference: PIL's own resize of the shorter side to 20 (40x48 -> 20x24), centre crop 16x16.
    with Image.open(root / "val" / "dog" / "0.png") as im:
        ref = np.asarray(im.convert("RGB").resize((24, 20), Image.BILINEAR).crop((4, 2, 20, 18))).transpose(2, 0, 1)
    assert torch.equal(prepared.test.x[2], torch.from_numpy(ref.copy()))  # dog's first val image, sorted order
    assert prepared.test.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert info.mean == pytest.approx(channel_stats(prepared.train.x)[0])  # computed from the training split
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog", "eel"]
    again = load_prepared(tmp_path / "prep")
    assert torch.equal(again.train.x, prepared.train.x)
    # mean/std from params (a pretrained model's), max_per_class, test/ instead of val/
    root2 = write_image_folder(tmp_path / "imgs2", test="test")
    opts = {"root": str(root2), "size": 8, "max_per_class": 2, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    p2 = prepare("imagefolder", tmp_path / "raw", tmp_path / "prep2", imagefolder=opts)
    assert p2.info.mean == (0.5, 0.5, 0.5) and p2.info.std == (0.2, 0.2, 0.2) and len(p2.train) == 6


DATA_KEYS = {"raw_dir": "data/raw", "val_size": 0, "augment": "default", "seed": 0, "download": False}


def _data_section(**imagefolder):
    return {"data": {**DATA_KEYS, "name": "imagefolder", "imagefolder": imagefolder}}


def test_image_folder_config_errors(tmp_path):
    def err(**opts):
        with pytest.raises(ConfigError) as info:
            section(_data_section(**opts), "data", DataConfig)
        return str(info.value)

    assert "missing key data.imagefolder.root" in err(size=8)
    assert "does not exist" in err(root=str(tmp_path / "nope"), size=8)
    (tmp_path / "empty").mkdir()
    assert "no train/ folder" in err(root=str(tmp_path / "empty"), size=8)
    root = write_image_folder(tmp_path / "imgs")
    shutil.rmtree(root / "val")
    assert "no val/ or test/ folder" in err(root=str(root), size=8)
    root = write_image_folder(tmp_path / "imgs2")
    shutil.rmtree(root / "val" / "eel")
    (root / "val" / "fox").mkdir()
    msg = err(root=str(root), size=8)
    assert "differ" in msg and "eel" in msg and "fox" in msg
    ok = write_image_folder(tmp_path / "ok")
    assert "resize must be an integer >= size" in err(root=str(ok), size=8, resize=4)
    assert "unknown key data.imagefolder.colour" in err(root=str(ok), size=8, colour=1)
    assert "go together" in err(root=str(ok), size=8, mean=[0.5, 0.5, 0.5])
    assert section(_data_section(root=str(ok), size=8), "data", DataConfig).imagefolder["size"] == 8


def test_prepare_stage_reads_an_image_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "imgs")
    params = {"data": {**DATA_KEYS, "name": "imagefolder", "imagefolder": {"root": str(root), "size": 12}}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    r = invoke(prepare_stage, "--out", "data/prepared")
    assert r.exit_code == 0, r.output
    assert "3 classes" in r.output and load_prepared(Path("data/prepared")).train.x.shape == (12, 3, 12, 12)
    params["data"]["val_size"] = 500  # more than the 12 training images
    Path("params.yaml").write_text(yaml.safe_dump(params))
    r = invoke(prepare_stage, "--out", "data/big_val")
    assert r.exit_code == 1 and "data.val_size=500 must be smaller than the 12 training images" in r.output
    assert "params.yaml" in r.output and "Traceback" not in r.output and not Path("data/big_val").exists()
    params["data"]["val_size"] = 0
    Path("params.yaml").write_text(yaml.safe_dump(params))
    shutil.rmtree(root / "val" / "cat")
    r = invoke(prepare_stage, "--out", "data/other")
    assert r.exit_code == 1 and "data.imagefolder.root" in r.output and "cat" in r.output
    assert not Path("data/other").exists()


# ------------------------------------------------------------------ the stages from checkpoints of your own


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The tiny params and prepared data, and three checkpoints of the user's own of the tiny model."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert invoke(prepare_stage, "--out", "data/prepared").exit_code == 0
    m = params["model"]
    spec = model_spec(m["name"], 4, 1, 28, m["args"])
    Path("mine").mkdir()
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(from_spec(spec).state_dict(), f"mine/plain_{seed}.pt")  # plain state dicts
    torch.manual_seed(2)
    save_checkpoint("mine/mc.pt", spec, from_spec(spec).state_dict())  # a modeconn checkpoint
    return params


def _write(params: dict) -> None:
    Path("params.yaml").write_text(yaml.safe_dump(params))


def test_curve_between_checkpoints_of_your_own(workspace):
    p = workspace
    p["curve"].update(endpoint_files=["mine/plain_0.pt", "mine/mc.pt"], epochs=1)
    _write(p)
    r = invoke(fit_curve)
    assert r.exit_code == 0, r.output
    curve = torch.load("data/curve/curve.pt", weights_only=True)
    assert curve["endpoints"] == ["mine/plain_0.pt", "mine/mc.pt"]
    run = json.loads(Path("metrics/curve_train.run.json").read_text())
    assert seq(run["endpoints"]) == ["mine/plain_0.pt", "mine/mc.pt"]
    # The ends of the curve are the files' weights.
    from modeconn.curves import load_curve

    c, _ = load_curve(Path("data/curve/curve.pt"), from_spec)
    a, b = torch.load("mine/plain_0.pt", weights_only=True), load_checkpoint("mine/mc.pt")["state_dict"]
    for k, v in c.state_at(0.0).items():
        if k in a and a[k].is_floating_point() and "running" not in k:
            assert torch.allclose(v, a[k]), k
    for k, v in c.state_at(1.0).items():
        if k in b and b[k].is_floating_point() and "running" not in k:
            assert torch.allclose(v, b[k]), k


def test_curve_endpoint_files_of_two_architectures_name_both(workspace):
    p = workspace
    other = model_spec("convfc", 4, 1, 28, {"width": 3, "fc_width": 16, "batch_norm": True})
    save_checkpoint("mine/other.pt", other, from_spec(other).state_dict())
    p["curve"]["endpoint_files"] = ["mine/mc.pt", "mine/other.pt"]
    _write(p)
    r = invoke(fit_curve)
    assert r.exit_code == 1 and "mine/mc.pt" in r.output and "mine/other.pt" in r.output
    assert "different architectures" in r.output and not Path("data/curve/curve.pt").exists()
    torch.save(from_spec(other).state_dict(), "mine/other_plain.pt")  # does not fit the model section
    p["curve"]["endpoint_files"] = ["mine/plain_0.pt", "mine/other_plain.pt"]
    _write(p)
    r = invoke(fit_curve)
    assert r.exit_code == 1 and "mine/other_plain.pt" in r.output and "does not fit" in r.output
    p["curve"]["endpoint_files"] = ["mine/plain_0.pt", "mine/none.pt"]
    _write(p)
    r = invoke(fit_curve)
    assert r.exit_code == 1 and "curve.endpoint_files: mine/none.pt not found" in r.output


def test_fge_from_checkpoints_of_your_own(workspace):
    p = workspace
    p["fge"].update(start_files=["mine/plain_1.pt", "mine/mc.pt"])
    _write(p)
    r = invoke(fge)
    assert r.exit_code == 0, r.output
    snaps = torch.load("data/fge/snapshots.pt", weights_only=True)
    assert len(snaps["runs"]) == 2
    summary = json.loads(Path("metrics/fge.json").read_text())
    assert 0 <= summary["ensemble_accuracy"] <= 1
    p["fge"]["start_files"] = ["mine/plain_1.pt", "mine/plain_1.pt"]
    with pytest.raises(ConfigError, match="twice"):
        section(p, "fge", FgeConfig)
