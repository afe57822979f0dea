"""Data: raw datasets (:mod:`.raw`), the prepared tensors on disk (:mod:`.prepared`) and the on-device
loader with its batched augmentation (:mod:`.loader`)::

    load_raw(name, raw_dir)      raw files (idx, CIFAR pickles) -> (train, test)
    load_image_folder(root, size) an ImageFolder layout (train/, val/ or test/) -> (train, test, classes)
    prepare(name, raw, out)      + validation split, mean/std -> out/data.pt, out/meta.json
    subset_prepared(out, sub, …) a seeded subset of the train and test splits, in the same format
    load_prepared(out, device)   -> Prepared
    Loader(split, info, B, ...)  -> (x float32 [B, C, H, W] normalised, y int64 [B])
"""

from .imagefolder import check_image_folder, load_image_folder, train_image_count
from .loader import CROP_PADDING, EVAL_BATCH, EvalBatches, Loader, eval_batches, random_crop, random_flip
from .prepared import (
    Prepared,
    channel_stats,
    load_prepared,
    prepare,
    read_info,
    resolve_augment,
    subset_prepared,
    train_images,
)
from .raw import (
    AUGMENTATIONS,
    DATASETS,
    SYSTEM_DIRS,
    DatasetInfo,
    Split,
    check_split,
    load_raw,
    make_synthetic,
    read_idx,
)

__all__ = [
    "AUGMENTATIONS",
    "CROP_PADDING",
    "DATASETS",
    "EVAL_BATCH",
    "SYSTEM_DIRS",
    "DatasetInfo",
    "EvalBatches",
    "Loader",
    "Prepared",
    "Split",
    "channel_stats",
    "check_image_folder",
    "check_split",
    "eval_batches",
    "load_image_folder",
    "load_prepared",
    "load_raw",
    "make_synthetic",
    "prepare",
    "random_crop",
    "random_flip",
    "read_idx",
    "read_info",
    "resolve_augment",
    "subset_prepared",
    "train_image_count",
    "train_images",
]
