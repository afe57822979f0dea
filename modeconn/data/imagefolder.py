"""An image folder (torchvision ``ImageFolder`` layout) as uint8 tensors, like every other dataset.

The paper's ImageNet experiment (Garipov et al. 2018, Section 5.4: FGE for 5 epochs from a pretrained
ResNet-50) and most users' own data come as folders of image files::

    <root>/train/<class>/*.jpg|png|...     the training split, one folder per class
    <root>/val/<class>/...                 the test split (or <root>/test/ when there is no val/)

Classes are the sorted folder names (as ``ImageFolder`` orders them) and must be the same in both
splits. Each image is converted to RGB, its shorter side resized to ``resize`` (bilinear, antialiased),
then centre-cropped to ``size`` x ``size`` (the usual ImageNet evaluation transform: resize 256,
crop 224), and stored as uint8 [N, 3, size, size]. The data then lives in memory like the other
datasets (DESIGN decision 5): budget 3·size² bytes per image (150 KB at 224 px).

    check_image_folder(root)                  -> (classes, test folder), or a ConfigError saying what is wrong
    load_image_folder(root, size, resize)     -> (train, test, classes)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modeconn.errors import ConfigError, DataError

from .raw import Split

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
TEST_SPLITS = ("val", "test")  # the first that exists is the test split


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_image_folder(root: Path | str) -> tuple[list[str], Path]:
    """The class names and the test folder of an image folder; a ConfigError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder root {root} does not exist (or is not a folder)")
    train = root / "train"
    if not train.is_dir():
        raise ConfigError(f"image folder {root} has no train/ folder: put the training images in {train}/<class>/")
    test = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if test is None:
        raise ConfigError(f"image folder {root} has no val/ or test/ folder: put the test images in {root}/val/<cls>/")
    classes, test_classes = _classes(train), _classes(test)
    if len(classes) < 2:
        raise ConfigError(f"{train} must hold one folder per class (at least 2), found {classes}")
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise ConfigError(
            f"the class folders of {train} and {test} differ: only in train/: {only_train or 'none'}; "
            f"only in {test.name}/: {only_test or 'none'}"
        )
    return classes, test


def train_image_count(root: Path | str, max_per_class: int = 0) -> int:
    """How many training images :func:`load_image_folder` reads from ``root`` (before any validation split),
    without reading them: the files of each class folder of ``train/``, ``max_per_class`` at most."""
    classes, _ = check_image_folder(root)
    return sum(len(_files(Path(root) / "train" / c, max_per_class)) for c in classes)


def _files(folder: Path, max_per_class: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    return files[:max_per_class] if max_per_class else files


def _read(path: Path, size: int, resize: int) -> np.ndarray:
    from PIL import Image  # installed with torchvision

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.array(im, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, size, size)
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}. Remove or replace the file.") from None


def _split(folder: Path, classes: list[str], size: int, resize: int, max_per_class: int) -> Split:
    per_class = [_files(folder / c, max_per_class) for c in classes]
    empty = [c for c, files in zip(classes, per_class) if not files]
    if empty:
        raise DataError(f"{folder}: no image files ({', '.join(EXTENSIONS)}) in class folder(s) {empty}")
    n = sum(map(len, per_class))
    x = torch.empty(n, 3, size, size, dtype=torch.uint8)  # (N, 3, S, S), filled in place
    y = torch.empty(n, dtype=torch.int64)
    i = 0
    for label, files in enumerate(per_class):
        for path in files:
            x[i] = torch.from_numpy(_read(path, size, resize))
            y[i] = label
            i += 1
    return Split(x, y)


def load_image_folder(
    root: Path | str, size: int, resize: int | None = None, max_per_class: int = 0
) -> tuple[Split, Split, list[str]]:
    """The (train, test) splits of an image folder as uint8 [N, 3, size, size], and its class names.

    ``resize``: the shorter side before the centre crop (None: ``size``, i.e. no margin cropped away).
    ``max_per_class``: at most this many training images per class, the first in sorted file order
    (0: all); the test split is always read whole.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"image folder: size must be a positive integer, got {size!r}")
    resize = size if resize is None else resize
    if not isinstance(resize, int) or isinstance(resize, bool) or resize < size:
        raise ConfigError(f"image folder: resize must be an integer >= size ({size}), got {resize!r}")
    if not isinstance(max_per_class, int) or isinstance(max_per_class, bool) or max_per_class < 0:
        raise ConfigError(f"image folder: max_per_class must be 0 (all) or positive, got {max_per_class!r}")
    classes, test = check_image_folder(root)
    train = _split(Path(root) / "train", classes, size, resize, max_per_class)
    return train, _split(test, classes, size, resize, 0), classes
