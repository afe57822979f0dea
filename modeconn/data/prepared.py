"""A dataset prepared once, on disk: uint8 tensors, the validation split and the train statistics.

prepare(name, raw_dir, out)   load_raw (or an image folder) + a seeded validation split + per-channel
                              mean/std -> out/data.pt, out/meta.json (written atomically)
train_images(name, ...)       how many training images prepare gives, without preparing
subset_prepared(src, out, …)  a seeded subset of a prepared folder's train and test splits, in its format
read_info(out)                -> DatasetInfo, from out/meta.json only (no tensors read)
load_prepared(out, device)    -> Prepared, its tensors on ``device``
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from modeconn.errors import ConfigError, DataError
from modeconn.io import atomic_dir, load_file

from .imagefolder import load_image_folder, train_image_count
from .raw import AUGMENTATIONS, DATASETS, DatasetInfo, Split, _check_name, _load_raw, check_split, make_synthetic

log = logging.getLogger(__name__)


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


IMAGEFOLDER_KEYS = ("root", "size", "resize", "max_per_class", "mean", "std")


def _image_folder(options: dict | None) -> tuple[Split, Split, str, list[str], dict]:
    """(train, test, source, classes, normalisation) of ``prepare("imagefolder", imagefolder=options)``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(IMAGEFOLDER_KEYS))
    if unknown:
        raise ConfigError(f"unknown image folder option {unknown[0]!r}; options: {', '.join(IMAGEFOLDER_KEYS)}")
    for key in ("root", "size"):
        if key not in options:
            raise ConfigError(f"an image folder needs the option {key!r} (options: {', '.join(IMAGEFOLDER_KEYS)})")
    norm = {k: options[k] for k in ("mean", "std") if options.get(k) is not None}
    for key, values in norm.items():
        ok = isinstance(values, (list, tuple)) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)
        if not ok or (key == "std" and min(values) <= 0):
            raise ConfigError(f"image folder option {key} must be 3 numbers (one per RGB channel), got {values!r}")
    if len(norm) == 1:
        raise ConfigError("image folder options mean and std go together: set both or neither (computed from train)")
    train, test, classes = load_image_folder(
        options["root"], options["size"], options.get("resize"), options.get("max_per_class") or 0
    )
    return train, test, f"image folder {options['root']}", classes, norm


def _dataset_info(name: str, train: Split, synthetic_kwargs: dict | None, classes: list | None = None) -> DatasetInfo:
    info = DATASETS[name]
    if name == "imagefolder":
        info = dataclasses.replace(info, num_classes=len(classes or ()), size=train.x.shape[2])
    if name == "synthetic":
        num_classes = (synthetic_kwargs or {}).get("num_classes", info.num_classes)
        info = dataclasses.replace(info, num_classes=num_classes, channels=train.x.shape[1], size=train.x.shape[2])
    return info


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
    imagefolder: dict | None = None,
) -> Prepared:
    """Load a dataset, carve a seeded validation split, compute mean/std and write ``out_dir``.

    ``imagefolder`` (for ``name="imagefolder"``): ``root``, ``size``, optional ``resize``,
    ``max_per_class`` and ``mean``/``std`` (3 numbers each, e.g. those a pretrained model was trained
    with; without them the training split's own statistics, as for every dataset).

    ``out_dir`` gets ``data.pt`` (uint8 images, int64 labels) and ``meta.json``, written into a
    temporary sibling folder that then replaces ``out_dir``: a failure leaves the old one intact.
    """
    info = _check_name(name)
    augment = resolve_augment(augment, info)
    if not isinstance(val_size, int) or val_size < 0:
        raise ConfigError(f"val_size must be a non-negative integer, got {val_size!r}")
    classes, norm = None, {}
    if name == "imagefolder":
        train, test, source, classes, norm = _image_folder(imagefolder)
    else:
        train, test, source = _load_raw(
            name, raw_dir, download=download, system_dirs=system_dirs, synthetic_kwargs=synthetic_kwargs
        )
    if val_size >= len(train):
        raise ConfigError(f"val_size={val_size} must be smaller than the {len(train)} training images of {name}")
    info = _dataset_info(name, train, synthetic_kwargs, classes)
    for what, split in (("train", train), ("test", test)):
        check_split(f"{name} {what} split from {source}", split, info)

    val = None
    if val_size > 0:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
        train, val = Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])

    mean, std = channel_stats(train.x)
    if norm:  # set by the user (image folder): e.g. the statistics a pretrained model expects
        mean, std = tuple(map(float, norm["mean"])), tuple(map(float, norm["std"]))
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
        **({"classes": classes} if classes is not None else {}),
    }
    with atomic_dir(out_dir) as tmp:  # a temporary sibling, swapped in whole on success
        torch.save(tensors, tmp / "data.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("%s: wrote %s (%d train, %d val, %d test)", name, out_dir, meta["n_train"], meta["n_val"], meta["n_test"])
    return prepared


def train_images(
    name: str, *, synthetic_kwargs: dict | None = None, imagefolder: dict | None = None, prepared: Path | None = None
) -> int | None:
    """How many training images (before the validation split) :func:`prepare` gives for ``name``, without
    preparing: synthetic data and an image folder from their options, a named dataset from the folder
    ``prepared`` that :func:`prepare` wrote (its size does not depend on the options); None where that folder
    is not there or holds another dataset."""
    if name == "synthetic":
        default = inspect.signature(make_synthetic).parameters["n_train"].default
        return (synthetic_kwargs or {}).get("n_train", default)
    if name == "imagefolder":
        return train_image_count(imagefolder["root"], imagefolder.get("max_per_class", 0))
    try:
        meta = json.loads((Path(prepared) / "meta.json").read_text()) if prepared is not None else None
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("name") != name:
        return None
    return int(meta["n_train"]) + int(meta["n_val"])


def subset_prepared(
    prepared: Path, out: Path, *, train_size: int, test_size: int, seed: int = 0, hint: str = ""
) -> dict:
    """A seeded subset of the train and test splits of the folder ``prepared`` (made by :func:`prepare`),
    written to ``out`` in the same format; returns its metadata.

    ``train_size`` and ``test_size`` images (0 = all) are drawn without replacement from one generator seeded
    with ``seed`` (train first), kept in their order; the validation split, the normalisation statistics (of
    the whole training split) and the augmentation stay as prepared. ``hint`` ends a missing-file error."""
    prepared = Path(prepared)
    tensors = load_file(prepared / "data.pt", "prepared data", hint)
    meta = json.loads((prepared / "meta.json").read_text())
    g = torch.Generator().manual_seed(seed)
    for split, size in (("train", train_size), ("test", test_size)):
        n = int(tensors[f"{split}_y"].numel())
        if size > n:
            raise ConfigError(f"{split}_size = {size} exceeds the {n} {split} images in {prepared}")
        if size:
            keep = torch.randperm(n, generator=g)[:size].sort().values
            tensors[f"{split}_x"], tensors[f"{split}_y"] = tensors[f"{split}_x"][keep], tensors[f"{split}_y"][keep]
        meta[f"n_{split}"] = int(tensors[f"{split}_y"].numel())
    meta["subset"] = {"train_size": train_size, "test_size": test_size, "seed": seed}
    with atomic_dir(out) as tmp:
        torch.save(tensors, tmp / "data.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _read_meta(meta_file: Path, fix: str) -> tuple[dict, DatasetInfo]:
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
    return meta, info


def read_info(path: Path, hint: str = "Rebuild it with modeconn.data.prepare.") -> DatasetInfo:
    """The DatasetInfo of the prepared folder ``path``, from its meta.json alone (no tensors are read)."""
    return _read_meta(Path(path) / "meta.json", hint)[1]


def load_prepared(
    path: Path, device: torch.device | str = "cpu", hint: str = "Rebuild it with modeconn.data.prepare."
) -> Prepared:
    """Read what :func:`prepare` wrote into ``path`` (a folder), with the tensors on ``device``.

    ``hint`` ends every error message: how the caller's user makes the folder again.
    """
    path = Path(path)
    data_file, meta_file = path / "data.pt", path / "meta.json"
    fix = hint
    meta, info = _read_meta(meta_file, fix)
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
        check_split(f"{data_file} ({key})", s, info)
        if len(s) != n:
            raise DataError(f"{data_file}: {key} split has {len(s)} images, {meta_file} says {n}. {fix}")
        return s

    try:
        counts = {k: int(meta[f"n_{k}"]) for k in ("train", "val", "test")}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"prepared dataset metadata {meta_file} is corrupt (no split sizes). {fix}") from e
    val = split("val", counts["val"]) if counts["val"] > 0 else None
    return Prepared(info, split("train", counts["train"]), split("test", counts["test"]), val)
