"""Batches of a split held in memory on the training device, augmented and normalised there.

The paper's augmentation (Sec. 5, after He et al. 2016): a random crop of the
4-pixel zero-padded image and a random horizontal flip. All random draws of an
epoch are made at once; no per-sample Python runs (DESIGN decision 5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from modeconn.errors import ConfigError
from modeconn.runtime import as_channels_last

from .prepared import Prepared
from .raw import AUGMENTATIONS, DatasetInfo, Split, check_split

CROP_PADDING = 4  # pixels of zero padding before the random crop (Garipov et al., after He et al. 2016)
EVAL_BATCH = 1000  # batch of pure inference passes (no effect on results)



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
        shard: tuple[int, int] = (0, 1),
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        augment = (info.augment if train else "none") if augment is None else augment
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ConfigError(f"max_samples must be a positive integer or None, got {max_samples!r}")
        check_split("Loader split", split, info)
        self.device = torch.device(device) if device is not None else split.x.device
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.drop_last, self.channels_last = drop_last, channels_last
        # Data-parallel: rank r of w processes takes the r-th of w equal slices of every batch, so the w
        # shards of a step are exactly the batch one process would draw (same order, same augmentation).
        self.rank, self.world = shard
        if self.world > 1 and (batch_size % self.world or not drop_last):
            raise ConfigError(
                f"batch_size {batch_size} cannot be split evenly over {self.world} processes: use a batch size "
                f"divisible by the number of processes (and drop_last)"
            )
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
            part = self.batch_size // self.world
            start = i * self.batch_size + self.rank * part
            sl = slice(start, start + part)
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
                x = as_channels_last(x)  # explicit NHWC strides, also for one channel
            yield x, y


class EvalBatches(NamedTuple):
    """The un-augmented passes that measure a network at a point of weight space (paper, Sec. 3)."""

    bn: Loader  # training images for BatchNorm recalibration
    train: Loader  # training images the train loss and error are measured on
    test: Loader
    val: Loader | None  # None when the dataset has no validation split


def eval_batches(data: Prepared, batch_size: int = EVAL_BATCH, *, bn_samples: int = 0, train_samples: int = 0,
                 test_samples: int = 0, seed: int = 0, channels_last: bool = False) -> EvalBatches:
    """In-order, un-augmented loaders over the splits of ``data``; a count of 0 means the whole split.

    Each subset is drawn once from ``seed`` (the same images at every point measured). Augmentation is
    off even when the dataset's training loaders use it: BN statistics and train loss belong to the data,
    not to its augmented copies.
    """

    def loader(split: Split, count: int) -> Loader:
        return Loader(split, data.info, batch_size, train=False, augment="none", seed=seed,
                      max_samples=count or None, channels_last=channels_last)

    return EvalBatches(loader(data.train, bn_samples), loader(data.train, train_samples),
                       loader(data.test, test_samples), loader(data.val, 0) if data.val is not None else None)
