"""What the bench measures and how much: :class:`Settings` (the command's options) and the fixed sizes of
its runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

from modeconn.errors import ConfigError

BATCH = 128  # training batch, as in params.yaml's train and curve sections
WARMUP = 3  # batches before any training measurement
BN_IMAGES = 10_000  # images in the recalibration pass
BN_BATCH = 500  # its batch: eval.batch_size of params.yaml
USUAL_WORKERS = (0, 2)  # DataLoader worker counts always tried
MIB = 2**20

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure and how much; the defaults take a minute or two on 2 idle CPU cores."""

    params: Path = Path("params.yaml")
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA)
    channels_last: str = "auto"  # 1 | 0 | auto (on, CPU and CUDA alike)
    batches: int = 100  # timed training batches per run
    repeats: int = 3  # interleaved rounds; a figure is the median over them
    workers: int = 2  # a DataLoader worker count tried besides USUAL_WORKERS
    bn_images: int = BN_IMAGES
    dataset: str | None = None  # overrides data.name (e.g. "synthetic")
    augment: str | None = None  # overrides data.augment (e.g. "crop_flip")
    paper_model: bool | None = None  # the VGG16 figures; None: on for CUDA, off elsewhere
    paper_batches: int | None = None  # their timed batches; None: --batches on CUDA, PAPER_CPU_BATCHES elsewhere
    peers: bool = True  # the official-style reference loops (tools/official_loops.py), paired with modeconn's
    seed: int = 0

    def __post_init__(self):
        for key in ("batches", "repeats", "bn_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (load in the main process) or more, got {self.workers}")
        if self.paper_batches is not None and self.paper_batches < 1:
            raise ConfigError(f"--paper-batches must be at least 1, got {self.paper_batches}")
