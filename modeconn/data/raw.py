"""Datasets from their raw files, as uint8 tensors in memory.

The experiments of Garipov et al. (2018, Section 5) train on image
classification sets (CIFAR-10, CIFAR-100; here Fashion-MNIST by default).
Every dataset is read into memory as uint8 ``[N, C, H, W]`` images and int64
``[N]`` labels:

    load_raw(name, raw_dir)   raw files (idx, CIFAR pickles) or a torchvision download -> (train, test)
    make_synthetic(...)       a small learnable dataset generated in code (tests, quick runs)

Where the files are looked for: ``raw_dir``, its usual sub-folders, the system
folders of :data:`SYSTEM_DIRS` (Debian's ``dataset-fashion-mnist``), then a
torchvision download where a network exists.
"""

from __future__ import annotations

import gzip
import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeconn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


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
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip"),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip"),
    # Defaults of make_synthetic(); num_classes, channels and size follow synthetic_kwargs.
    "synthetic": DatasetInfo("synthetic", 4, 1, 28, (0.5,), (0.3,), "none"),
    # An image folder (imagefolder.py); num_classes and size follow the folder and its options.
    "imagefolder": DatasetInfo("imagefolder", 2, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "flip"),
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


def check_split(what: str, split: Split, info: DatasetInfo) -> None:
    """Raise DataError unless ``split`` holds uint8 images of ``info``'s shape and labels in range."""
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
    if name == "imagefolder":
        raise ConfigError("an image folder is read by prepare(..., imagefolder={root, size}) or load_image_folder")
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
