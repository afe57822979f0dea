"""Tests for modeconn.data: raw formats, prepare/load round trip, the on-device loader."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeconn import data
from modeconn.data import (
    AUGMENTATIONS,
    DATASETS,
    Loader,
    Split,
    load_prepared,
    load_raw,
    make_synthetic,
    prepare,
    random_crop,
    read_idx,
)
from modeconn.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# helpers that write tiny raw files


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist_like(folder: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = True, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, (n,), dtype=np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte", x, gz=gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y, gz=gz)
        arrays[split] = (x, y)
    return arrays


def write_cifar(root: Path, name: str, per_batch: int = 4, seed: int = 0):
    """Fake CIFAR python pickles in torchvision's layout; returns the raw (data, labels) arrays."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        folder, key, classes = root / "cifar-10-batches-py", b"labels", 10
    else:
        files = ["train", "test"]
        folder, key, classes = root / "cifar-100-python", b"fine_labels", 100
    folder.mkdir(parents=True)
    raw = {}
    for f in files:
        d = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, per_batch)]  # a list, as in the real files
        with open(folder / f, "wb") as fh:
            pickle.dump({b"batch_label": f.encode(), key: labels, b"data": d}, fh)
        raw[f] = (d, labels)
    return raw


def synthetic(n: int = 64, seed: int = 0, **kwargs) -> tuple[Split, Split]:
    return make_synthetic(n_train=n, n_test=n // 2, seed=seed, **kwargs)


# ---------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    t = read_idx(write_idx(tmp_path / "a-idx", array, gz=gz))
    assert t.dtype == torch.uint8 and tuple(t.shape) == shape
    assert np.array_equal(t.numpy(), array)


def test_read_idx_big_endian_types(tmp_path):
    ints = np.array([[1, -2], [300000, 7]], dtype=np.int32)
    floats = np.array([0.5, -1.25], dtype=np.float32)
    assert torch.equal(read_idx(write_idx(tmp_path / "i", ints)), torch.from_numpy(ints))
    assert torch.equal(read_idx(write_idx(tmp_path / "f", floats)), torch.from_numpy(floats))


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda good: good[:-5],  # truncated payload
        lambda good: good[:6],  # truncated header
        lambda good: b"\x12\x34" + good[2:],  # bad magic
        lambda good: good[:2] + b"\x42" + good[3:],  # bad type byte
        lambda good: good + b"extra",  # trailing bytes
        lambda good: b"garbage garbage garbage",
        lambda good: gzip.compress(good)[:-10],  # truncated gzip stream
        lambda good: b"",
    ],
)
def test_read_idx_malformed_names_file(tmp_path, make_bad):
    good = write_idx(tmp_path / "good", np.zeros((2, 3, 3), np.uint8)).read_bytes()
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(make_bad(good))
    with pytest.raises(DataError, match="bad-idx3-ubyte"):
        read_idx(bad)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# load_raw


@pytest.mark.parametrize("sub", [".", "fashion_mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_raw_dir(tmp_path, sub, gz):
    arrays = write_mnist_like(tmp_path / sub, gz=gz)
    train, test = load_raw("fashion_mnist", tmp_path, download=False, system_dirs=())
    assert train.x.shape == (6, 1, 28, 28) and test.x.shape == (4, 1, 28, 28)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert np.array_equal(train.x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(test.y.numpy(), arrays["t10k"][1])


def test_fashion_mnist_from_system_dir(tmp_path):
    write_mnist_like(tmp_path / "system")
    train, test = load_raw("fashion_mnist", tmp_path / "raw", download=False, system_dirs=(tmp_path / "system",))
    assert len(train) == 6 and len(test) == 4


def test_mnist_from_torchvision_layout(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw", gz=False)
    train, test = load_raw("mnist", tmp_path, download=False)
    assert len(train) == 6 and len(test) == 4


def test_fashion_mnist_missing_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        load_raw("fashion_mnist", tmp_path / "raw", download=False, system_dirs=())
    message = str(err.value)
    assert "dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "raw") in message


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    def offline(name, raw_dir):
        raise OSError("no network")

    monkeypatch.setattr(data.raw, "_download", offline)
    with pytest.raises(DataError, match="no network"):
        load_raw("cifar10", tmp_path, download=True)


def test_idx_with_wrong_image_size_names_file(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 32, 32), np.uint8), gz=True)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_raw("fashion_mnist", tmp_path, download=False, system_dirs=())


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_pickles(tmp_path, name, classes):
    raw = write_cifar(tmp_path, name)
    train, test = load_raw(name, tmp_path, download=False)
    n_train = 20 if name == "cifar10" else 4
    assert train.x.shape == (n_train, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    train_files = [f for f in raw if f not in ("test_batch", "test")]
    expected_y = [label for f in train_files for label in raw[f][1]]
    assert train.y.tolist() == expected_y
    assert test.y.tolist() == raw["test_batch" if name == "cifar10" else "test"][1]
    # Pixel layout: a row is 1024 red, 1024 green, 1024 blue values, each 32 rows of 32.
    d = raw[train_files[-1]][0]
    c, h, w = 2, 5, 17
    assert int(train.x[-1, c, h, w]) == int(d[-1, c * 1024 + h * 32 + w])
    assert int(train.x[-4, 0, 0, 1]) == int(d[0, 1])


def test_cifar_corrupt_pickle_names_file(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_raw("cifar10", tmp_path, download=False)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="fashion_mnist"):
        load_raw("imagenet", Path("."), download=False)
    with pytest.raises(ConfigError, match="cifar10"):
        prepare("imagenet", Path("."), Path("out"))


# ---------------------------------------------------------------------------------------------
# synthetic


def test_make_synthetic_deterministic():
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    assert torch.equal(a[0].x, b[0].x) and torch.equal(a[1].y, b[1].y)
    assert not torch.equal(a[0].x, c[0].x)
    train, test = make_synthetic(n_train=10, n_test=5, num_classes=3, channels=3, size=8)
    assert train.x.shape == (10, 3, 8, 8) and test.x.shape == (5, 3, 8, 8)
    assert train.x.dtype == torch.uint8 and int(train.y.max()) < 3


def test_make_synthetic_is_learnable():
    """Nearest class mean on the train split classifies the test split far above chance."""
    train, test = synthetic(n=256, num_classes=4)
    means = torch.stack([train.x[train.y == k].float().mean(0) for k in range(4)])  # (K, C, H, W)
    dist = ((test.x.float()[:, None] - means[None]) ** 2).flatten(2).sum(-1)  # (N, K)
    assert (dist.argmin(1) == test.y).float().mean() > 0.9


def test_make_synthetic_bad_options():
    with pytest.raises(ConfigError, match="num_classes"):
        make_synthetic(num_classes=1)
    with pytest.raises(ConfigError, match="bogus"):
        load_raw("synthetic", Path("."), synthetic_kwargs={"bogus": 1})


# ---------------------------------------------------------------------------------------------
# prepare / load_prepared


def test_prepare_round_trip(tmp_path):
    kwargs = {"n_train": 50, "n_test": 20, "num_classes": 3, "channels": 2, "size": 12, "seed": 1}
    prepared = prepare("synthetic", tmp_path / "raw", tmp_path / "out", val_size=10, seed=5, synthetic_kwargs=kwargs)
    assert len(prepared.train) == 40 and len(prepared.val) == 10 and len(prepared.test) == 20
    assert prepared.info.num_classes == 3 and prepared.info.channels == 2 and prepared.info.size == 12
    assert prepared.info.augment == "none"

    # train and val partition the original train split, and the carving is seeded
    full, _ = make_synthetic(**kwargs)
    both = torch.cat([prepared.train.x, prepared.val.x]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, full.x.flatten(1).tolist()))
    again = prepare("synthetic", tmp_path / "raw", tmp_path / "out2", val_size=10, seed=5, synthetic_kwargs=kwargs)
    assert torch.equal(again.val.x, prepared.val.x)
    other = prepare("synthetic", tmp_path / "raw", tmp_path / "out3", val_size=10, seed=6, synthetic_kwargs=kwargs)
    assert not torch.equal(other.val.x, prepared.val.x)

    # mean/std against a direct float64 computation over the remaining train images
    pixels = prepared.train.x.double().div(255).transpose(0, 1).flatten(1)  # (C, N*H*W)
    assert np.allclose(prepared.info.mean, pixels.mean(1).tolist(), atol=1e-12)
    assert np.allclose(prepared.info.std, pixels.std(1, correction=0).tolist(), atol=1e-12)

    loaded = load_prepared(tmp_path / "out")
    assert loaded.info == prepared.info
    for a, b in [(loaded.train, prepared.train), (loaded.val, prepared.val), (loaded.test, prepared.test)]:
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert (meta["n_train"], meta["n_val"], meta["n_test"]) == (40, 10, 20)
    assert meta["source"].startswith("make_synthetic(") and meta["name"] == "synthetic"


def test_prepare_fashion_mnist_files(tmp_path):
    write_mnist_like(tmp_path / "raw", n_train=8)
    prepared = prepare("fashion_mnist", tmp_path / "raw", tmp_path / "out", download=False, system_dirs=())
    assert prepared.val is None and len(prepared.train) == 8 and prepared.info.augment == "crop_flip"
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["source"] == str(tmp_path / "raw") and meta["n_val"] == 0
    assert load_prepared(tmp_path / "out").val is None


def test_prepare_options_checked(tmp_path):
    kwargs = {"n_train": 10, "n_test": 4}
    for val_size in (10, 11, -1):
        with pytest.raises(ConfigError, match="val_size"):
            prepare("synthetic", tmp_path, tmp_path / "out", val_size=val_size, synthetic_kwargs=kwargs)
    with pytest.raises(ConfigError, match="crop_flip"):
        prepare("synthetic", tmp_path, tmp_path / "out", augment="rotate", synthetic_kwargs=kwargs)
    flip = prepare("synthetic", tmp_path, tmp_path / "o", augment="flip", synthetic_kwargs=kwargs)
    assert flip.info.augment == "flip"
    assert not (tmp_path / "out").exists()


def test_prepare_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out"
    kwargs = {"n_train": 10, "n_test": 4}
    prepare("synthetic", tmp_path, out, synthetic_kwargs=kwargs)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_save(obj, f, *args, **kw):
        Path(f).write_bytes(b"half")  # a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        prepare("synthetic", tmp_path, out, val_size=3, synthetic_kwargs=kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left

    monkeypatch.undo()
    prepare("synthetic", tmp_path, out, val_size=3, synthetic_kwargs=kwargs)  # replaces the old one
    assert load_prepared(out).val is not None and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_load_prepared_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="modeconn.data.prepare"):  # the library's own hint names no DVC stage
        load_prepared(out)
    prepare("synthetic", tmp_path, out, synthetic_kwargs={"n_train": 10, "n_test": 4})
    (out / "data.pt").write_bytes(b"\x00corrupt")
    with pytest.raises(DataError, match=r"data\.pt.*Run the thing"):  # the caller's hint ends the message
        load_prepared(out, hint="Run the thing.")
    (out / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json"):
        load_prepared(out)


def test_subset_prepared_draws_seeded_rows_in_order_and_keeps_the_rest(tmp_path):
    kwargs = {"n_train": 40, "n_test": 20, "num_classes": 3, "size": 8}
    full = prepare("synthetic", tmp_path, tmp_path / "full", val_size=6, synthetic_kwargs=kwargs)
    meta = data.subset_prepared(tmp_path / "full", tmp_path / "sub", train_size=10, test_size=0, seed=3)
    sub = load_prepared(tmp_path / "sub")
    g = torch.Generator().manual_seed(3)
    keep = torch.randperm(34, generator=g)[:10].sort().values  # the rows of the 34 train images, in order
    assert torch.equal(sub.train.x, full.train.x[keep]) and torch.equal(sub.train.y, full.train.y[keep])
    assert torch.equal(sub.test.x, full.test.x) and torch.equal(sub.val.x, full.val.x)  # 0 = all; val as is
    assert sub.info == full.info, "normalisation and augmentation stay as prepared"
    assert (meta["n_train"], meta["n_val"], meta["n_test"]) == (10, 6, 20)
    assert meta["subset"] == {"train_size": 10, "test_size": 0, "seed": 3}
    assert json.loads((tmp_path / "sub" / "meta.json").read_text()) == meta
    with pytest.raises(ConfigError, match=r"^test_size = 21 exceeds the 20 test images in "):
        data.subset_prepared(tmp_path / "full", tmp_path / "big", train_size=0, test_size=21)
    assert not (tmp_path / "big").exists()


def test_train_images_without_preparing(tmp_path):
    assert data.train_images("synthetic", synthetic_kwargs={"n_train": 33}) == 33
    default = len(make_synthetic()[0])
    assert data.train_images("synthetic") == default and data.train_images("synthetic", synthetic_kwargs={}) == default
    assert data.train_images("fashion_mnist") is None  # a named dataset before prepare has made it
    write_mnist_like(tmp_path / "raw", n_train=8)
    prepare("fashion_mnist", tmp_path / "raw", tmp_path / "out", val_size=3, download=False, system_dirs=())
    assert data.train_images("fashion_mnist", prepared=tmp_path / "out") == 8  # before the validation split
    assert data.train_images("mnist", prepared=tmp_path / "out") is None  # the folder holds another dataset


def test_prepared_to():
    train, test = synthetic()
    p = data.Prepared(DATASETS["synthetic"], train, test, None).to("cpu")
    assert p.val is None and p.train.x.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Loader


def test_loader_lengths():
    train, _ = synthetic(n=50)
    info = DATASETS["synthetic"]
    assert len(Loader(train, info, 16, train=False)) == 4
    assert len(Loader(train, info, 16, train=True, drop_last=True)) == 3
    batches = list(Loader(train, info, 16, train=True, drop_last=True))
    assert len(batches) == 3 and all(x.shape == (16, 1, 28, 28) for x, _ in batches)
    sizes = [len(y) for _, y in Loader(train, info, 16, train=False)]
    assert sizes == [16, 16, 16, 2]
    loader = Loader(train, info, 8, train=False, max_samples=20)
    assert loader.n == 20 and len(loader) == 3
    assert Loader(train, info, 8, train=False, max_samples=500).n == 50


def test_loader_normalises():
    train, _ = synthetic(n=64, channels=3, size=8)
    info = dataclasses.replace(DATASETS["synthetic"], channels=3, size=8, mean=(0,) * 3, std=(1,) * 3)
    mean, std = data.channel_stats(train.x)
    info = dataclasses.replace(info, mean=mean, std=std)
    ((x, y),) = list(Loader(train, info, 64, train=False))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    per_channel = x.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 1e-5
    assert (per_channel.std(1, correction=0) - 1).abs().max() < 1e-5
    expected = (train.x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(y, train.y)


def test_eval_loader_in_order_covers_all():
    train, _ = synthetic(n=37)
    xs, ys = zip(*Loader(train, DATASETS["synthetic"], 10, train=False))
    info = DATASETS["synthetic"]
    pixels = torch.cat(xs) * info.std[0] + info.mean[0]
    assert torch.equal(torch.cat(ys), train.y)
    assert torch.allclose(pixels * 255, train.x.float(), atol=1e-3)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_train_loader_deterministic_and_reshuffles():
    train, _ = synthetic(n=40)
    info = dataclasses.replace(DATASETS["synthetic"], augment="crop_flip")
    a, b = Loader(train, info, 8, train=True, seed=7), Loader(train, info, 8, train=True, seed=7)
    a1, a2, b1, b2 = _epoch(a), _epoch(a), _epoch(b), _epoch(b)
    for (xa, ya), (xb, yb) in zip(a1 + a2, b1 + b2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order1, order2 = torch.cat([y for _, y in a1]), torch.cat([y for _, y in a2])
    assert not torch.equal(torch.cat([x for x, _ in a1]), torch.cat([x for x, _ in a2]))
    assert sorted(order1.tolist()) == sorted(train.y.tolist()) == sorted(order2.tolist())
    c1 = _epoch(Loader(train, info, 8, train=True, seed=8))
    assert not torch.equal(torch.cat([x for x, _ in a1]), torch.cat([x for x, _ in c1]))


def test_train_loader_without_augment_is_a_permutation():
    train, _ = synthetic(n=30)
    info = DATASETS["synthetic"]
    loader = Loader(train, info, 7, train=True, augment="none", seed=1)
    x = torch.cat([x for x, _ in loader])
    raw = (x * info.std[0] + info.mean[0]) * 255
    got = sorted(map(tuple, raw.round().to(torch.uint8).flatten(1).tolist()))
    assert got == sorted(map(tuple, train.x.flatten(1).tolist()))
    assert not torch.equal(x, torch.cat([x for x, _ in loader])), "the second epoch has the same order"


def test_loader_checks_options():
    train, _ = synthetic(n=10)
    info = DATASETS["synthetic"]
    with pytest.raises(ConfigError, match="augmentation"):
        Loader(train, info, 4, train=True, augment="rotate")
    with pytest.raises(ConfigError, match="batch_size"):
        Loader(train, info, 0, train=True)
    with pytest.raises(DataError):
        Loader(train, DATASETS["cifar10"], 4, train=True)


def _pixels(x: torch.Tensor, info) -> torch.Tensor:
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def test_flip_gives_image_or_mirror():
    img = torch.arange(28 * 28, dtype=torch.float64).view(1, 1, 28, 28).remainder(251).to(torch.uint8)
    split = Split(img.repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.int64))
    info = DATASETS["synthetic"]
    out = _pixels(torch.cat([x for x, _ in Loader(split, info, 16, train=True, augment="flip")]), info)
    same = (out == img).flatten(1).all(1)
    mirrored = (out == img.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored) and same.any() and mirrored.any()


def test_crop_shifts_and_pads_with_zeros():
    img = torch.full((1, 1, 28, 28), 200, dtype=torch.uint8)
    split = Split(img.repeat(200, 1, 1, 1), torch.zeros(200, dtype=torch.int64))
    info = DATASETS["synthetic"]
    out = _pixels(torch.cat([x for x, _ in Loader(split, info, 50, train=True, augment="crop", seed=3)]), info)
    assert set(out.unique().tolist()) <= {0, 200}
    zero_rows = (out[:, 0] == 0).all(2).sum(1)  # (N,) rows that are all padding
    zero_cols = (out[:, 0] == 0).all(1).sum(1)
    assert zero_rows.max() == 4 and zero_cols.max() == 4  # never more than the padding
    assert ((out == 0).flatten(1).any(1)).float().mean() > 0.5  # most crops shift
    assert (out == 200).flatten(1).all(1).any()  # offset (4, 4) is the identity
    # the 200-block is always a contiguous 28-minus-shift square: rows/cols with 200 are not split
    assert ((out[:, 0] == 200).sum((1, 2)) == (28 - zero_rows) * (28 - zero_cols)).all()


def test_random_crop_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 9, 7), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (12, 2), generator=g)
    got = random_crop(x, offsets)
    for i in range(12):
        dy, dx = offsets[i].tolist()
        ref = F.pad(x[i], (4, 4, 4, 4))[:, dy : dy + 9, dx : dx + 7]
        assert torch.equal(got[i], ref), f"crop of sample {i} at {(dy, dx)} differs"


def test_loader_crop_flip_matches_reference():
    """The loader's batch equals the reference crop-then-flip of the same draws."""
    train, _ = synthetic(n=24, channels=3, size=10)
    info = dataclasses.replace(DATASETS["synthetic"], channels=3, size=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = Loader(train, info, 24, train=True, augment="crop_flip", seed=11)
    ((x, _),) = list(loader)
    g = torch.Generator().manual_seed(11)  # replay the loader's draws
    order = torch.randperm(24, generator=g)
    offsets = torch.randint(0, 9, (24, 2), generator=g)
    flips = torch.rand(24, generator=g) < 0.5
    for i in range(24):
        dy, dx = offsets[i].tolist()
        ref = F.pad(train.x[order[i]], (4, 4, 4, 4))[:, dy : dy + 10, dx : dx + 10]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(_pixels(x[i : i + 1], info)[0], ref), f"sample {i} differs"


def test_channels_last_and_device():
    train, _ = synthetic(n=8, channels=3, size=8)
    info = dataclasses.replace(DATASETS["synthetic"], channels=3, size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    ((x, y),) = list(Loader(train, info, 8, train=False, channels_last=True, device="cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    train, _ = synthetic(n=40, channels=3, size=8)
    info = dataclasses.replace(
        DATASETS["synthetic"], channels=3, size=8, mean=(0.5,) * 3, std=(0.25,) * 3, augment="crop_flip"
    )
    cpu = list(Loader(train, info, 16, train=True, seed=2))
    cuda = list(Loader(train.to("cuda"), info, 16, train=True, seed=2))
    for (xc, yc), (xg, yg) in zip(cpu, cuda):
        assert xg.device.type == "cuda" and torch.allclose(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_augmentations_listed():
    assert AUGMENTATIONS == ("none", "crop", "flip", "crop_flip")
    assert {info.augment for info in DATASETS.values()} <= set(AUGMENTATIONS)
    assert DATASETS["fashion_mnist"].augment == "crop_flip" and DATASETS["mnist"].augment == "crop"
