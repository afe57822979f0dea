"""Datasets as uint8 tensors in memory, and a batched on-device loader.

The experiments of Garipov et al. (2018, Section 5) train on image
classification sets (CIFAR-10, CIFAR-100; here Fashion-MNIST by default) with
the standard augmentation: random crop of a 4-pixel zero-padded image and a
random horizontal flip. Every dataset is read into memory as uint8
``[N, C, H, W]`` images and int64 ``[N]`` labels; batches are drawn, augmented
and normalised on the training device, with no per-sample Python.

Pipeline::

    load_raw(name, raw_dir)      raw files (idx, CIFAR pickles) -> (train, test)
    prepare(name, raw, out)      + validation split, mean/std -> out/data.pt, out/meta.json
    load_prepared(out, device)   -> Prepared
    Loader(split, info, B, ...)  -> (x float32 [B, C, H, W] normalised, y int64 [B])
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeconn.errors import ConfigError, DataError
from modeconn.io import atomic_dir

log = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")
CROP_PADDING = 4  # pixels of zero padding before the random crop (Garipov et al., after He et al. 2016)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a dataset; images are [channels, size, size]."""

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    augment: str  # one of AUGMENTATIONS


# mean/std here are the usual published values; prepare() recomputes them from the train split.
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), "crop_flip"),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), "crop"),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip"
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip"
    ),
    # Defaults of make_synthetic(); num_classes, channels and size follow synthetic_kwargs.
    "synthetic": DatasetInfo("synthetic", 4, 1, 28, (0.5,), (0.3,), "none"),
}

# Searched after raw_dir when load_raw(system_dirs=None).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),  # Debian: dataset-fashion-mnist
}

_IDX_FILES = {  # split -> (images, labels), as the MNIST and Fashion-MNIST distributions name them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_FOLDER = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
_CIFAR_FILES = {  # name -> (folder, train files, test files, label key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}


@dataclass
class Split:
    """One split of a dataset: uint8 images and int64 labels, on one device."""

    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Prepared:
    """A prepared dataset; ``info`` carries the train-split mean/std and the resolved augmentation."""

    info: DatasetInfo
    train: Split
    test: Split
    val: Split | None

    def to(self, device: torch.device | str) -> Prepared:
        val = self.val.to(device) if self.val is not None else None
        return Prepared(self.info, self.train.to(device), self.test.to(device), val)


# ---------------------------------------------------------------------------------------------
# Raw files


_IDX_DTYPES = {  # IDX type byte -> big-endian numpy dtype
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST format; plain or gzip-compressed) into a tensor of its dims and type."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {e}. Replace it with a good copy.") from e

    def bad(why: str) -> DataError:
        return DataError(f"{path} is not a valid IDX file: {why}. Replace it with a good copy.")

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise bad("the magic number does not start with two zero bytes")
    if data[2] not in _IDX_DTYPES:
        raise bad(f"unknown data type byte 0x{data[2]:02x}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    if ndim == 0:
        raise bad("zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad(f"the file ends inside the header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise bad(
            f"header says {dims} of {dtype.name} ({expected} bytes) but {len(data) - header} "
            f"bytes follow; the file is truncated or not what it claims"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_split(name: str, images: Path, labels: Path) -> Split:
    info = DATASETS[name]
    x, y = read_idx(images), read_idx(labels)
    if x.dtype != torch.uint8 or x.shape[1:] != (info.size, info.size):
        raise DataError(
            f"{images}: expected uint8 images [N, {info.size}, {info.size}] for {name}, "
            f"got {x.dtype} {list(x.shape)}. Is it the right file?"
        )
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"{labels}: expected {x.shape[0]} labels (one per image in {images.name}), "
            f"got shape {list(y.shape)}. Are the files from the same dataset?"
        )
    return Split(x.unsqueeze(1), y.long())  # [N, 1, H, W]


def _load_idx_dir(name: str, folder: Path) -> tuple[Split, Split] | None:
    """Both splits from a folder holding the four idx files, or None if any is missing."""
    found = {s: [_find(folder, f) for f in files] for s, files in _IDX_FILES.items()}
    if any(p is None for paths in found.values() for p in paths):
        return None
    return _idx_split(name, *found["train"]), _idx_split(name, *found["test"])


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # pickle raises many types on a corrupt file
        raise DataError(f"cannot read CIFAR batch {path}: {e}. Replace it with a good copy.") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict (a CIFAR python batch), got {type(batch)}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def _cifar_split(paths: Sequence[Path], label_key: str) -> Split:
    xs, ys = [], []
    for path in paths:
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path}: a CIFAR batch needs keys 'data' and '{label_key}'")
        x = np.asarray(batch["data"])
        y = np.asarray(batch[label_key])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
            raise DataError(
                f"{path}: expected 'data' uint8 [N, 3072] and '{label_key}' [N], "
                f"got {x.dtype} {list(x.shape)} and {list(y.shape)}"
            )
        xs.append(x.reshape(-1, 3, 32, 32))  # rows are channel-major: 1024 R, 1024 G, 1024 B
        ys.append(y.astype(np.int64))
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def _load_cifar_dir(name: str, root: Path) -> tuple[Split, Split] | None:
    folder, train_files, test_files, label_key = _CIFAR_FILES[name]
    paths = [root / folder / f for f in (*train_files, *test_files)]
    if not all(p.is_file() for p in paths):
        return None
    n = len(train_files)
    return _cifar_split(paths[:n], label_key), _cifar_split(paths[n:], label_key)


def _download(name: str, raw_dir: Path) -> None:
    import torchvision.datasets as tvd  # slow to import; only needed here

    cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}
    raw_dir.mkdir(parents=True, exist_ok=True)
    cls[name](root=str(raw_dir), train=True, download=True)
    cls[name](root=str(raw_dir), train=False, download=True)


def _search_dirs(name: str, raw_dir: Path, system_dirs: Sequence[Path]) -> list[Path]:
    if name in _CIFAR_FILES:
        return [raw_dir, raw_dir / name, *map(Path, system_dirs)]
    tv = _TORCHVISION_FOLDER[name]
    return [raw_dir, raw_dir / name, raw_dir / tv / "raw", *map(Path, system_dirs)]


def _load_from(name: str, folder: Path) -> tuple[Split, Split] | None:
    return _load_cifar_dir(name, folder) if name in _CIFAR_FILES else _load_idx_dir(name, folder)


def _missing_message(name: str, raw_dir: Path, searched: list[Path], download_error: str | None) -> str:
    if name in _CIFAR_FILES:
        folder, train_files, test_files, _ = _CIFAR_FILES[name]
        what = f"the folder {raw_dir / folder}/ with {', '.join((*train_files, *test_files))}"
        archive = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name]
        what += f" (extract {archive} from https://www.cs.toronto.edu/~kriz/cifar.html into {raw_dir})"
    else:
        files = [f for pair in _IDX_FILES.values() for f in pair]
        what = f"{', '.join(f + '.gz' for f in files)} (gzipped or not) in {raw_dir}/"
    lines = [f"dataset {name!r} not found. Looked in: {', '.join(map(str, searched))}.", f"Put {what}."]
    if name == "fashion_mnist":
        lines.append(
            "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` installs them in "
            "/usr/share/datasets/fashion-mnist, where they are found."
        )
    if download_error is None:
        lines.append("Download is disabled; enable it to fetch the files with torchvision (needs network).")
    else:
        lines.append(f"Downloading with torchvision failed: {download_error}")
    return "\n".join(lines)


def _check_name(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def _load_raw(
    name: str,
    raw_dir: Path,
    *,
    download: bool,
    system_dirs: Sequence[Path] | None,
    synthetic_kwargs: dict | None,
) -> tuple[Split, Split, str]:
    """(train, test, source): load_raw plus a line saying where the data came from."""
    _check_name(name)
    if name == "synthetic":
        kwargs = dict(synthetic_kwargs or {})
        try:
            train, test = make_synthetic(**kwargs)
        except TypeError as e:
            raise ConfigError(f"bad synthetic dataset options {kwargs}: {e}") from e
        return train, test, "make_synthetic(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    raw_dir = Path(raw_dir)
    if system_dirs is None:
        system_dirs = SYSTEM_DIRS.get(name, ())
    searched = _search_dirs(name, raw_dir, system_dirs)
    for folder in searched:
        splits = _load_from(name, folder)
        if splits is not None:
            log.info("%s: found in %s", name, folder)
            return *splits, str(folder)
    download_error = None
    if download:
        log.info("%s: not found locally; downloading with torchvision into %s", name, raw_dir)
        try:
            _download(name, raw_dir)
        except Exception as e:  # network, HTTP, checksum and archive errors alike
            download_error = f"{type(e).__name__}: {e}"
        else:
            folder = raw_dir if name in _CIFAR_FILES else raw_dir / _TORCHVISION_FOLDER[name] / "raw"
            splits = _load_from(name, folder)
            if splits is not None:
                return *splits, f"{folder} (downloaded by torchvision)"
            download_error = f"torchvision reported success but the files are not in {folder}"
    raise DataError(_missing_message(name, raw_dir, searched, download_error))


def load_raw(
    name: str,
    raw_dir: Path,
    *,
    download: bool = True,
    system_dirs: Sequence[Path] | None = None,
    synthetic_kwargs: dict | None = None,
) -> tuple[Split, Split]:
    """The (train, test) splits of a dataset, from local files or a torchvision download.

    Looks in ``raw_dir``, ``raw_dir/<name>``, torchvision's layout under ``raw_dir``, then
    ``system_dirs`` (None: :data:`SYSTEM_DIRS` for the dataset, e.g. the Debian Fashion-MNIST
    package), then downloads with torchvision into ``raw_dir`` if ``download``.
    """
    train, test, _ = _load_raw(
        name, raw_dir, download=download, system_dirs=system_dirs, synthetic_kwargs=synthetic_kwargs
    )
    return train, test


def make_synthetic(
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 4,
    channels: int = 1,
    size: int = 28,
    seed: int = 0,
) -> tuple[Split, Split]:
    """A small learnable image dataset: each class is a smooth random template plus pixel noise.

    Templates are 4x4 random images upsampled to ``size``, so they survive crops and flips;
    the noise (std 48 of 255) keeps the task from being trivial. Deterministic given ``seed``.
    """
    for key, value, least in [
        ("n_train", n_train, 1), ("n_test", n_test, 1), ("num_classes", num_classes, 2),
        ("channels", channels, 1), ("size", size, 1),
    ]:  # fmt: skip
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"synthetic dataset: {key} must be an integer >= {least}, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g) * 255
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)  # (K, C, S, S)

    def split(n: int) -> Split:
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, channels, size, size, generator=g) * 48
        x = (templates[y] + noise).round_().clamp_(0, 255).to(torch.uint8)  # (N, C, S, S)
        return Split(x, y)

    return split(n_train), split(n_test)


# ---------------------------------------------------------------------------------------------
# Prepared datasets on disk


def resolve_augment(augment: str, info: DatasetInfo) -> str:
    """Resolve "default" to the dataset's default augmentation; check any other name."""
    if augment == "default":
        return info.augment
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {augment!r}; choose one of: default, {', '.join(AUGMENTATIONS)}")
    return augment


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] units.

    Exact: from a 256-bin histogram per channel, so no float accumulation over millions of pixels.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double().cpu()  # (256,)
        p = counts / counts.sum()
        mean = float((p * levels).sum())
        means.append(mean)
        stds.append(float((p * (levels - mean) ** 2).sum().sqrt()))
    return tuple(means), tuple(stds)


def _dataset_info(name: str, train: Split, synthetic_kwargs: dict | None) -> DatasetInfo:
    info = DATASETS[name]
    if name == "synthetic":
        num_classes = (synthetic_kwargs or {}).get("num_classes", info.num_classes)
        info = dataclasses.replace(
            info, num_classes=num_classes, channels=train.x.shape[1], size=train.x.shape[2]
        )
    return info


def _check_split(what: str, split: Split, info: DatasetInfo) -> None:
    shape = (info.channels, info.size, info.size)
    if split.x.dtype != torch.uint8 or split.x.dim() != 4 or tuple(split.x.shape[1:]) != shape:
        raise DataError(
            f"{what}: expected uint8 images [N, {', '.join(map(str, shape))}], "
            f"got {split.x.dtype} {list(split.x.shape)}"
        )
    if split.y.dtype != torch.int64 or split.y.shape != split.x.shape[:1]:
        raise DataError(
            f"{what}: expected int64 labels [{split.x.shape[0]}], got {split.y.dtype} {list(split.y.shape)}"
        )
    if len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= info.num_classes):
        raise DataError(
            f"{what}: labels must be in [0, {info.num_classes}), found "
            f"[{int(split.y.min())}, {int(split.y.max())}]; are the files from {info.name}?"
        )


def prepare(
    name: str,
    raw_dir: Path,
    out_dir: Path,
    *,
    val_size: int = 0,
    seed: int = 0,
    augment: str = "default",
    download: bool = True,
    system_dirs: Sequence[Path] | None = None,
    synthetic_kwargs: dict | None = None,
) -> Prepared:
    """Load a dataset, carve a seeded validation split, compute mean/std and write ``out_dir``.

    ``out_dir`` gets ``data.pt`` (uint8 images, int64 labels) and ``meta.json``, written into a
    temporary sibling folder that then replaces ``out_dir``: a failure leaves the old one intact.
    """
    info = _check_name(name)
    augment = resolve_augment(augment, info)
    if not isinstance(val_size, int) or val_size < 0:
        raise ConfigError(f"val_size must be a non-negative integer, got {val_size!r}")
    train, test, source = _load_raw(
        name, raw_dir, download=download, system_dirs=system_dirs, synthetic_kwargs=synthetic_kwargs
    )
    if val_size >= len(train):
        raise ConfigError(f"val_size={val_size} must be smaller than the {len(train)} training images of {name}")
    info = _dataset_info(name, train, synthetic_kwargs)
    for what, split in (("train", train), ("test", test)):
        _check_split(f"{name} {what} split from {source}", split, info)

    val = None
    if val_size > 0:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
        train, val = Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])

    mean, std = channel_stats(train.x)
    info = dataclasses.replace(info, mean=mean, std=std, augment=augment)
    prepared = Prepared(info, train, test, val)

    tensors = {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}
    if val is not None:
        tensors |= {"val_x": val.x, "val_y": val.y}
    meta = {
        **dataclasses.asdict(info),
        "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
        "n_test": len(test),
        "val_seed": seed,
        "source": source,
    }
    with atomic_dir(out_dir) as tmp:  # a temporary sibling, swapped in whole on success
        torch.save(tensors, tmp / "data.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("%s: wrote %s (%d train, %d val, %d test)", name, out_dir, meta["n_train"], meta["n_val"], meta["n_test"])
    return prepared


def load_prepared(path: Path, device: torch.device | str = "cpu") -> Prepared:
    """Read what :func:`prepare` wrote into ``path`` (a folder), with the tensors on ``device``."""
    path = Path(path)
    data_file, meta_file = path / "data.pt", path / "meta.json"
    fix = "Run `dvc repro prepare` (or python -m stages.prepare) to rebuild it."
    try:
        meta = json.loads(meta_file.read_text())
        info = DatasetInfo(
            name=meta["name"], num_classes=int(meta["num_classes"]), channels=int(meta["channels"]),
            size=int(meta["size"]), mean=tuple(meta["mean"]), std=tuple(meta["std"]), augment=meta["augment"],
        )  # fmt: skip
    except FileNotFoundError as e:
        raise DataError(f"prepared dataset metadata {meta_file} is missing. {fix}") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"prepared dataset metadata {meta_file} is corrupt ({type(e).__name__}: {e}). {fix}") from e
    if info.augment not in AUGMENTATIONS:
        raise DataError(f"{meta_file}: unknown augmentation {info.augment!r}. {fix}")
    try:
        tensors = torch.load(data_file, map_location=device, weights_only=True)
    except FileNotFoundError as e:
        raise DataError(f"prepared dataset {data_file} is missing. {fix}") from e
    except Exception as e:  # torch.load raises many types on a corrupt file
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        raise DataError(f"prepared dataset {data_file} is corrupt or not a prepared dataset ({reason}). {fix}") from e

    def split(key: str, n: int) -> Split:
        if not isinstance(tensors, dict) or f"{key}_x" not in tensors or f"{key}_y" not in tensors:
            raise DataError(f"prepared dataset {data_file} has no {key} split. {fix}")
        s = Split(tensors[f"{key}_x"], tensors[f"{key}_y"])
        _check_split(f"{data_file} ({key})", s, info)
        if len(s) != n:
            raise DataError(f"{data_file}: {key} split has {len(s)} images, {meta_file} says {n}. {fix}")
        return s

    try:
        counts = {k: int(meta[f"n_{k}"]) for k in ("train", "val", "test")}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"prepared dataset metadata {meta_file} is corrupt (no split sizes). {fix}") from e
    val = split("val", counts["val"]) if counts["val"] > 0 else None
    return Prepared(info, split("train", counts["train"]), split("test", counts["test"]), val)


# ---------------------------------------------------------------------------------------------
# Loader


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Crop each image of ``x`` from its zero-padded self at ``offsets``.

    x: (B, C, H, W) any dtype; offsets: (B, 2) integer (dy, dx) in [0, 2 * padding].
    Returns (B, C, H, W); offset (padding, padding) is the identity.
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p), zeros
    rows = offsets[:, 0, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(W, device=x.device)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def random_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images of x (B, C, H, W) where mask (B,) is True."""
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


class Loader:
    """Batches of a split held in memory on the device; normalisation and augmentation batched on the device.

    Train loaders reshuffle at every ``__iter__`` from a generator seeded once, so the sequence of
    epochs is fixed by ``seed``; the shuffle and augmentation draws are made on the CPU, so CPU and
    CUDA see the same batches. Eval loaders go in order, without augmentation unless ``augment``
    asks for it.
    """

    def __init__(
        self,
        split: Split,
        info: DatasetInfo,
        batch_size: int,
        *,
        train: bool,
        augment: str | None = None,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        channels_last: bool = False,
        max_samples: int | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        augment = (info.augment if train else "none") if augment is None else augment
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ConfigError(f"max_samples must be a positive integer or None, got {max_samples!r}")
        _check_split("Loader split", split, info)
        self.device = torch.device(device) if device is not None else split.x.device
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.drop_last, self.channels_last = drop_last, channels_last
        self.generator = torch.Generator().manual_seed(seed)

        x, y = split.x, split.y
        if max_samples is not None and max_samples < len(split):
            # A fixed subset, drawn from its own stream so it does not depend on the epochs drawn.
            subset = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:max_samples]
            subset = subset.sort().values.to(x.device)
            x, y = x[subset], y[subset]
        self.x, self.y = x.to(self.device), y.to(self.device)  # uint8 (N, C, H, W), int64 (N,)
        self.n = self.y.shape[0]
        shape = (1, info.channels, 1, 1)
        # (x / 255 - mean) / std == (x - 255 mean) * (1 / (255 std))
        self._shift = torch.tensor([255 * m for m in info.mean], device=self.device).view(shape)
        self._scale = torch.tensor([1 / (255 * s) for s in info.std], device=self.device).view(shape)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # All random draws of the epoch at once, on the CPU; one copy to the device.
        g, order, offsets, flips = self.generator, None, None, None
        if self.train:
            order = torch.randperm(self.n, generator=g).to(self.device)  # (N,)
        if "crop" in self.augment:
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (self.n, 2), generator=g).to(self.device)
        if "flip" in self.augment:
            flips = (torch.rand(self.n, generator=g) < 0.5).to(self.device)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is None:
                x, y = self.x[sl], self.y[sl]  # views, in order
            else:
                x, y = self.x[order[sl]], self.y[order[sl]]
            if offsets is not None:
                x = random_crop(x, offsets[sl])
            if flips is not None:
                x = random_flip(x, flips[sl])
            x = (x.float() - self._shift) * self._scale  # float32 (B, C, H, W)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
