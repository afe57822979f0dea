"""The conventional data path the in-memory Loader is compared with: a per-sample ``Dataset`` of PIL images
and ``torchvision.transforms.v2`` behind a ``DataLoader``, in each of the usual worker and pin_memory settings."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch

from modeconn.data import DatasetInfo, Split
from modeconn.runtime import Runtime

from .settings import USUAL_WORKERS, Batches


class PerSampleDataset(torch.utils.data.Dataset):
    """Images one at a time, as ``torchvision.datasets.FashionMNIST``/``CIFAR10`` serve them.

    Holds the uint8 images as numpy (N, H, W, C); ``__getitem__`` makes a PIL image (a tensor
    when the channel count has no PIL mode) and applies ``transform``.
    """

    def __init__(self, split: Split, transform: Callable):
        self.images = split.x.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (N, H, W, C)
        self.labels = split.y.cpu().tolist()
        self.transform = transform
        self.pil = self.images.shape[-1] in (1, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = self.images[i]
        if self.pil:
            image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        else:
            image = torch.from_numpy(image).permute(2, 0, 1)  # (C, H, W)
        return self.transform(image), self.labels[i]


def transforms_v2(info: DatasetInfo, augment: str):
    """The usual recipe: augment the PIL image, then convert and normalise."""
    from torchvision.transforms import v2

    steps = []
    if "crop" in augment:
        steps.append(v2.RandomCrop(info.size, padding=4))
    if "flip" in augment:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    return v2.Compose(steps)


@dataclasses.dataclass(frozen=True)
class LoaderSetting:
    """One way of running the per-sample DataLoader."""

    workers: int
    pin_memory: bool = False

    @property
    def key(self) -> str:
        return f"w{self.workers}" + ("_pin" if self.pin_memory else "")

    @property
    def name(self) -> str:
        return f"{self.workers} worker{'' if self.workers == 1 else 's'}" + (", pin_memory" if self.pin_memory else "")

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.name, "workers": self.workers, "pin_memory": self.pin_memory}


def loader_settings(workers: int, cuda: bool) -> list[LoaderSetting]:
    """The usual DataLoader settings: 0 and 2 workers and ``workers``; on CUDA each without and with pin_memory."""
    pins = (False, True) if cuda else (False,)
    return [LoaderSetting(w, pin) for w in sorted({*USUAL_WORKERS, workers}) for pin in pins]


def best_setting(runs: dict[LoaderSetting, list[float]]) -> LoaderSetting:
    """The setting of the highest median images/s (the first of equals)."""
    return max(runs, key=lambda s: statistics.median(runs[s]))


def data_loader(
    split: Split, info: DatasetInfo, batch_size: int, *, train: bool, setting: LoaderSetting, seed: int = 0
) -> torch.utils.data.DataLoader:
    dataset = PerSampleDataset(split, transforms_v2(info, info.augment if train else "none"))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=setting.workers,
        drop_last=train,
        pin_memory=setting.pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


class OnDevice:
    """Re-iterable: the batches of ``loader`` moved to the runtime's device, in its memory format."""

    def __init__(self, loader: Batches, runtime: Runtime):
        self.loader, self.runtime = loader, runtime

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.runtime.device
        for x, y in self.loader:
            yield self.runtime.batch(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
