"""Throughput of the pipeline's pieces on the default model and data: ``python -m stages.bench``.

A command beside the stages (not a stage, not the library): it reads params.yaml through the stages'
section readers, so it measures what the pipeline would run, on whatever device there is, under the
runtime of :class:`modeconn.runtime.Runtime` (``--device``, ``--precision``, ``--channels-last``;
bf16 autocast and channels_last on CUDA by default, and forced by the options on the CPU too).

For the ``data`` and ``model`` sections of params.yaml this measures:

1. training images/s with the in-memory :class:`modeconn.data.Loader` (uint8 data on the device;
   shuffle, augmentation and normalisation done per batch);
2. the same with the conventional per-sample path: a ``torch.utils.data.Dataset`` that, like
   ``torchvision.datasets.FashionMNIST``, makes one PIL image per sample and runs the
   ``torchvision.transforms.v2`` pipeline on it (RandomCrop with 4-pixel padding and
   RandomHorizontalFlip as the augmentation asks, then ToImage, ToDtype, Normalize), behind a
   ``DataLoader``. Every usual setting is measured in the same run — 0 and 2 worker processes (and
   ``--workers``), each with and without ``pin_memory`` on CUDA — and the Loader is compared with the
   best of them (highest median images/s), not with one chosen in advance;
3. evaluation images/s (no grad, batch 1000, the test split) both ways, the best DataLoader setting
   chosen again (worker start-up counts here);
4. curve training images/s (paper, Sec. 3: a fresh t ~ U(0, 1) per minibatch and the network run
   at w = φ_θ(t), eq. 2, through the template's parameter slots) and its time per image relative to plain
   training. A curve step is one forward/backward of the network plus O(num_bends · |w|) to form
   φ_θ(t) and send the gradient to the bends, so the ratio should stay near 1 (the reference
   figure here is 1.5);
5. the time of one BatchNorm recalibration pass (:func:`modeconn.bn.recalibrate`) over 10k
   training images, for a BatchNorm variant of the model;
6. with ``--paper-model`` (the default on CUDA), the paper's network: VGG16 on 3x32x32 CIFAR-shaped
   synthetic uint8 data, 10 classes — training images/s, curve training images/s (Bezier, 3 bends,
   between two random initialisations) with its paired curve/plain ratio, and the images/s of one
   evaluation point (:func:`modeconn.paths.measure`: BN recalibration, then the train and test
   passes) on VGG16-BN, since VGG16 has no BatchNorm and its recalibration would be a no-op;
7. peak resident memory of the process and of its largest DataLoader worker; on CUDA the peak
   device memory allocated in each section (peak statistics reset at the start of each);
8. the memory layout and the thread count the runtime uses, each against the other choice in the same
   rounds: training and BN recalibration in channels_last against contiguous (NCHW), and training on
   torch's default thread count against one thread;
9. with ``--peers`` (the default), modeconn against the paper's official code, the way that code trains and
   evaluates (:mod:`stages.peers`: ``utils.train`` over a per-sample DataLoader in NCHW, the per-layer
   ``CurveNet``, ``update_bn`` + ``utils.test`` for one point), paired per round: training, curve training
   and one evaluation point (BN recalibration over ``--bn-images`` training images, then the train pass over
   as many and the whole test split, on the BatchNorm variant of the model). The reference runs in the bench's
   process, so it has the runtime's heap setting too (``MODECONN_HEAP``): the speed-ups are the loops' and the
   data paths' alone.

The augmentation is ``data.augment`` (``--augment`` overrides it) on both paths. Training figures
are taken over ``--batches`` batches of 128 after 3 warm-up batches, with the optimiser settings
of the ``train`` and ``curve`` sections (the paper's VGG16 settings for the paper model). The
measurements run in rounds, each round measuring every figure once in a rotating order; a figure
is the median over ``--repeats`` rounds, reported with its range. A speed-up or a curve/plain ratio
is paired: one ratio per round (same round, same number of batches), reported as the median and
the range of those ratios. Worker start-up is in the evaluation figures of the DataLoader path
(a pass starts new workers, as every evaluation in a pipeline does) but not in its training figure
(they start in the warm-up). The validation split is not carved out: it changes no speed.
Every section's forward passes are watched (forward hooks) for the device, the memory format of the
input and of the first convolution's weight, and the output dtype they actually ran with; the report
says so, or warns (a curve's weights are φ_θ(t) as :mod:`modeconn.curves` lays them out).
Other processes on the same CPUs spoil every figure (OpenMP threads that wait for a busy core
slow down many-fold); the report says how many CPUs they used meanwhile and warns.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from modeconn.bn import has_bn, recalibrate
from modeconn.curves import Curve, curve_loss
from modeconn.data import (
    DATASETS,
    EVAL_BATCH,
    DatasetInfo,
    Loader,
    Prepared,
    Split,
    channel_stats,
    eval_batches,
    make_synthetic,
    prepare,
)
from modeconn.errors import ConfigError, ModeconnError
from modeconn.io import atomic_write_json
from modeconn.models import create_model, from_spec
from modeconn.paths import measure
from modeconn.runtime import Runtime, seed_everything
from modeconn.train import cross_entropy_step, make_sgd, predict, train_epoch

from . import peers
from .kit.cli import ChannelsLastOpt, DeviceOpt, PrecisionOpt
from .kit.config import DataConfig, ModelConfig, read_sections

BATCH = 128  # training batch, as in params.yaml's train and curve sections
WARMUP = 3  # batches before any training measurement
BN_IMAGES = 10_000  # images in the recalibration pass
BN_BATCH = 500  # its batch: eval.batch_size of params.yaml
USUAL_WORKERS = (0, 2)  # DataLoader worker counts always tried
MIB = 2**20

# The paper's network and optimiser (Garipov et al. 2018, CIFAR-10 VGG16: lr 0.05, curve lr 0.015, wd 5e-4).
PAPER_MODEL, PAPER_BN_MODEL = "vgg16", "vgg16_bn"
PAPER_CLASSES, PAPER_CHANNELS, PAPER_SIZE = 10, 3, 32
PAPER_LR, PAPER_CURVE_LR, PAPER_MOMENTUM, PAPER_WD = 0.05, 0.015, 0.9, 5e-4
PAPER_CURVE, PAPER_BENDS = "bezier", 3
PAPER_AUGMENT = "crop_flip"
PAPER_CPU_BATCHES = 2  # default --paper-batches on the CPU, where VGG16 takes seconds per batch

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
    peers: bool = True  # the official-style reference loops (stages/peers.py), paired with modeconn's
    seed: int = 0

    def __post_init__(self):
        for key in ("batches", "repeats", "bn_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (load in the main process) or more, got {self.workers}")
        if self.paper_batches is not None and self.paper_batches < 1:
            raise ConfigError(f"--paper-batches must be at least 1, got {self.paper_batches}")


@dataclasses.dataclass
class Figure:
    """One measured quantity: a run per round, reported as the median (of the per-round ratios if paired)."""

    label: str
    unit: str
    runs: list[float]
    paired: bool = False  # a ratio of two figures measured in the same round, one per round

    @property
    def value(self) -> float:
        return statistics.median(self.runs)


@dataclasses.dataclass
class Result:
    machine: dict[str, Any]
    setup: dict[str, Any]
    figures: dict[str, Figure]

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "setup": self.setup,
            "figures": {
                k: {"label": f.label, "unit": f.unit, "value": f.value, "runs": f.runs, "paired": f.paired}
                for k, f in self.figures.items()
            },
        }


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """One ratio per round: ``numerator[r] / denominator[r]``."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired ratios need one run of each per round, got {len(numerator)} and {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator)]


def paired_label(what: str, rounds: int) -> str:
    return f"{what}, paired, median [min–max] over {rounds} rounds"


def paired_figure(what: str, rounds: int, numerator: list[float], denominator: list[float]) -> Figure:
    """The ratio ``numerator / denominator`` of two figures measured in the same rounds, one per round."""
    return Figure(paired_label(what, rounds), "x", paired_ratios(numerator, denominator), paired=True)


def rotated(items: list, r: int) -> list:
    """``items`` starting at position r (mod its length): round r measures in this order."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


# ---------------------------------------------------------------------------------------------
# Settings from params.yaml


def load_data(data: DataConfig, dataset: str | None = None, augment: str | None = None) -> tuple[Prepared, str]:
    """The dataset (train and test, no validation split) as ``prepare`` makes it, and its source."""
    name = dataset or data.name
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    with tempfile.TemporaryDirectory(prefix="modeconn-bench-") as tmp:
        prepared = prepare(
            name,
            Path(data.raw_dir),
            Path(tmp) / "prepared",
            augment=augment or data.augment,
            download=data.download,
            synthetic_kwargs=data.synthetic if name == "synthetic" else None,
        )
        source = json.loads((Path(tmp) / "prepared" / "meta.json").read_text())["source"]
    return prepared, source


def build(model: ModelConfig, info: DatasetInfo, **overrides: Any) -> nn.Module:
    spec = model.spec(info)
    return from_spec({**spec, "args": {**spec["args"], **overrides}})


def build_bn(model_cfg: ModelConfig, info: DatasetInfo) -> tuple[nn.Module, str]:
    """The model with BatchNorm (itself, or with batch_norm=True), else ConvFC with BatchNorm."""
    name = model_cfg.name
    model = build(model_cfg, info)
    if has_bn(model):
        return model, name
    try:
        return build(model_cfg, info, batch_norm=True), f"{name}, batch_norm=True"
    except ConfigError:  # the model has no BatchNorm variant
        model = create_model(
            "convfc", info.num_classes, in_channels=info.channels, input_size=info.size, batch_norm=True
        )
        return model, "convfc (default size), batch_norm=True"


def paper_data(n_train: int, n_test: int, seed: int) -> Prepared:
    """CIFAR-shaped synthetic data (uint8 3x32x32, 10 classes), made in code, with its own mean/std."""
    train, test = make_synthetic(
        n_train=n_train,
        n_test=n_test,
        num_classes=PAPER_CLASSES,
        channels=PAPER_CHANNELS,
        size=PAPER_SIZE,
        seed=seed,
    )
    mean, std = channel_stats(train.x)
    info = DatasetInfo("synthetic", PAPER_CLASSES, PAPER_CHANNELS, PAPER_SIZE, mean, std, PAPER_AUGMENT)
    return Prepared(info, train, test, None)


# ---------------------------------------------------------------------------------------------
# The conventional path


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


# ---------------------------------------------------------------------------------------------
# Measurements


def forever(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch after epoch of ``batches`` (each pass reshuffles)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ConfigError(f"the training split gives no full batch of {BATCH} images; use a larger dataset")


class Trainer:
    """A loss, its optimiser and its batches; ``run(n)`` trains n batches after a warm-up, returns images/s.

    Each run opens its own stream and closes it at the end, so a DataLoader's workers start in the
    warm-up (untimed) and are gone before the next measurement.
    """

    def __init__(
        self,
        loss_fn,
        optimizer: torch.optim.Optimizer,
        batches: Batches,
        runtime: Runtime,
        module: nn.Module,
        what: str,
        warmup: int = WARMUP,
    ):
        self.loss_fn, self.optimizer, self.batches, self.runtime = loss_fn, optimizer, batches, runtime
        self.module, self.what, self.warmup = module, what, warmup
        self.iteration = 1

    def _train(self, stream: Iterator, n: int) -> float:
        lr = self.optimizer.param_groups[0]["lr"]
        stats, self.iteration = train_epoch(
            self.loss_fn,
            self.optimizer,
            itertools.islice(stream, n),
            lambda i: lr,
            self.iteration,
            self.runtime,
            what=self.what,
        )
        return stats.images_per_s  # train_epoch ends with .item(): the device has finished

    def run(self, n: int) -> float:
        self.module.train()
        stream = forever(self.batches)
        try:
            self._train(stream, self.warmup)
            return self._train(stream, n)
        finally:
            stream.close()  # a DataLoader's workers exit here and are reaped


def interleaved_steps(trainers: list[Trainer], n: int, runtime: Runtime) -> list[float]:
    """Median seconds per training step of each trainer, their steps interleaved one by one.

    ``n`` steps each after ``WARMUP`` untimed ones; a step is what ``train_epoch`` does per batch (forward
    under the runtime's autocast, zero_grad, backward, optimiser step), timed without fetching its batch.
    Interleaving step by step pairs the two far more tightly than two runs one after the other: a slower
    second on a shared machine hits both alike, and the medians drop the outliers.
    """
    streams = [forever(t.batches) for t in trainers]
    times: list[list[float]] = [[] for _ in trainers]
    for t in trainers:
        t.module.train()
    try:
        for i in range(WARMUP + n):
            for k, (t, stream) in enumerate(zip(trainers, streams)):
                x, y = next(stream)
                runtime.synchronize()
                start = time.perf_counter()
                with runtime.autocast():
                    loss, _ = t.loss_fn(x, y)
                t.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t.optimizer.step()
                runtime.synchronize()
                if i >= WARMUP:
                    times[k].append(time.perf_counter() - start)
    finally:
        for stream in streams:
            stream.close()
    return [statistics.median(ts) for ts in times]


def eval_speed(model: nn.Module, batches: Batches, runtime: Runtime, max_batches: int) -> float:
    """Images/s of one inference pass, timed from the start of iteration (worker start-up included)."""
    model.eval()
    runtime.synchronize()
    start = time.perf_counter()
    _, labels = predict(model, itertools.islice(batches, max_batches), runtime)
    return labels.numel() / (time.perf_counter() - start)


def bn_seconds(model: nn.Module, batches: Batches, runtime: Runtime) -> float:
    runtime.synchronize()
    start = time.perf_counter()
    recalibrate(model, batches, runtime=runtime)
    runtime.synchronize()
    return time.perf_counter() - start


def point_speed(curve: Curve, t: float, batches, runtime: Runtime) -> float:
    """Images/s of one evaluation point: φ_θ(t), BN recalibration there, then the evaluation passes."""
    images = batches.bn.n + batches.train.n + batches.test.n
    runtime.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        weights = {k: v.detach() for k, v in curve.weights(t).items()}
    measure(curve.template, weights, batches, runtime)  # ends with the predictions on the CPU
    return images / (time.perf_counter() - start)


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


class OtherLoad:
    """CPUs that other processes kept busy, on average, since construction (Linux; else None).

    All busy time in /proc/stat minus this process's and its reaped children's CPU time.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                jiffies = [int(v) for v in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq
        except (OSError, ValueError):
            return None
        busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
        ours = sum(
            r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )
        return time.monotonic(), busy, ours

    def cpus(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        (t0, busy0, ours0), (t1, busy1, ours1) = self.start, end
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)


class Probe:
    """What the forward passes of each section really ran with: device, memory format of the input and
    of the first convolution's weight, output dtype.

    Forward hooks on each watched network and on its first convolution (they fire in a curve's forward
    too, where the convolution sees the weight it is called with, a view of φ_θ(t)) record the first
    forward pass of every section; :meth:`mismatches` compares them with the runtime.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.section: str | None = None
        self.seen: dict[str, dict[str, str]] = {}
        self.conv_weight: dict[str, str] = {}  # section -> memory format of the first conv's weight
        self.expected_sections: list[str] = []

    def watch(self, module: nn.Module) -> nn.Module:
        module.register_forward_hook(self._hook)
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:
            conv.register_forward_hook(self._conv_hook)
        return module

    def _conv_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.section is not None and self.section not in self.conv_weight:
            self.conv_weight[self.section] = self._format(module.weight)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.section is None or self.section in self.seen or not args or not isinstance(output, torch.Tensor):
            return
        x = args[0]
        self.seen[self.section] = {
            "device": str(x.device),
            "memory_format": self._format(x),
            **({"weight_memory_format": self.conv_weight[self.section]} if self.section in self.conv_weight else {}),
            "output_dtype": str(output.dtype).removeprefix("torch."),
        }

    def _format(self, x: torch.Tensor) -> str:
        """The layout of x, naming the runtime's own first when both fit (one channel, 1x1 images)."""
        formats = [("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)]
        if self.runtime.channels_last:
            formats.reverse()
        for name, memory_format in formats:
            if (x.dim() == 4 and x.is_contiguous(memory_format=memory_format)) or (x.dim() != 4 and x.is_contiguous()):
                return name
        return "strided"

    def expected(self) -> dict[str, str]:
        layout = "channels_last" if self.runtime.channels_last else "contiguous"
        return {
            "device": self.runtime.device.type,
            "memory_format": layout,
            "weight_memory_format": layout,  # checked where the network has a convolution
            "output_dtype": "bfloat16" if self.runtime.precision == "bf16" else "float32",
        }

    def mismatches(self) -> list[str]:
        """One line per section whose forward passes did not run as the runtime says (none seen counts)."""
        want, out = self.expected(), []
        for section in self.expected_sections:
            seen = self.seen.get(section)
            if seen is None:
                out.append(f"{section}: no forward pass seen")
                continue
            got = {**seen, "device": torch.device(seen["device"]).type}
            wrong = [f"{k} {got[k]} (expected {v})" for k, v in want.items() if k in got and got[k] != v]
            if wrong:
                out.append(f"{section}: {', '.join(wrong)}")
        return out


class Sections:
    """Runs each measurement as a named section: status line, runtime probe, and on CUDA its own peak memory."""

    def __init__(self, runtime: Runtime, probe: Probe, status: Callable[[str], Any]):
        self.runtime, self.probe, self.status = runtime, probe, status
        self.cuda = runtime.device.type == "cuda"
        self.peaks: dict[str, list[float]] = {}  # MiB allocated at most during the section, per run
        self.before: dict[str, float] = {}  # MiB allocated when the section first started

    def __call__(self, key: str, what: str, fn: Callable[[], float]) -> float:
        self.status(what)
        if key not in self.probe.expected_sections:
            self.probe.expected_sections.append(key)
        device = self.runtime.device
        if self.cuda:
            self.runtime.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            self.before.setdefault(key, torch.cuda.memory_allocated(device) / MIB)
        self.probe.section = key
        try:
            value = fn()
        finally:
            self.probe.section = None
        if self.cuda:
            self.runtime.synchronize()
            self.peaks.setdefault(key, []).append(torch.cuda.max_memory_allocated(device) / MIB)
        return value

    def memory_figures(self, labels: dict[str, str]) -> dict[str, Figure]:
        """On CUDA, the peak device memory of each section and over all of them; nothing elsewhere."""
        if not self.peaks:
            return {}
        figures = {
            f"cuda_peak_{key}": Figure(
                f"peak CUDA memory allocated: {labels.get(key, key)} ({self.before[key]:,.0f} MiB allocated before)",
                "MiB",
                peaks,
            )
            for key, peaks in self.peaks.items()
        }
        overall = [max(runs) for runs in zip(*self.peaks.values())]  # one per round
        figures["cuda_peak"] = Figure("peak CUDA memory allocated, all sections", "MiB", overall)
        return figures


def bends(curve: Curve) -> list[nn.Parameter]:
    """What a curve trains: its interior bends (the template's own parameters are frozen)."""
    return [p for p in curve.parameters() if p.requires_grad]


def curve_training(
    curve: Curve,
    wd: float,
    lr: float,
    momentum: float,
    seed: int,
    batches: Batches,
    runtime: Runtime,
    what: str,
    warmup: int = WARMUP,
) -> Trainer:
    """Curve training as fit_curve does it: only the bends train (SGD without weight decay), wd acts on φ_θ(t)."""
    return Trainer(
        curve_loss(curve, wd, torch.Generator().manual_seed(seed)),
        make_sgd(bends(curve), lr, momentum, 0.0),
        batches,
        runtime,
        curve.template,
        what,
        warmup=warmup,
    )


def release(runtime: Runtime) -> None:
    """Free what the last phase left (its networks and data), so the next section's peak is its own."""
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()


def machine(runtime: Runtime) -> dict[str, Any]:
    device = runtime.device
    info = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "runtime": runtime.describe(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rss_after_imports_mib": peak_rss_mib(resource.RUSAGE_SELF),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measure_default(
    settings: Settings, runtime: Runtime, section: Sections, status: Callable[[str], Any]
) -> tuple[dict[str, Figure], dict[str, Any]]:
    """Figures 1-5 (and their setup) for the data and model of params.yaml."""
    data_cfg, model_cfg, train_cfg, curve_cfg = read_sections(settings.params, "data", "model", "train", "curve")
    lr, momentum, wd = train_cfg.lr, train_cfg.momentum, train_cfg.wd
    curve_lr, kind, num_bends = curve_cfg.lr, curve_cfg.type, curve_cfg.num_bends
    watch = section.probe.watch

    status("loading the data")
    data, source = load_data(data_cfg, settings.dataset, settings.augment)
    info = data.info
    data = data.to(runtime.device)
    channels_last = runtime.channels_last

    def fresh(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return runtime.prepare(build(model_cfg, info))

    def train_loader() -> Loader:
        return Loader(
            data.train, info, BATCH, train=True, seed=settings.seed, drop_last=True, channels_last=channels_last
        )

    # Plain training, both data paths and every DataLoader setting, from the same initialisation.
    plain_model = watch(fresh(settings.seed))
    plain = Trainer(
        cross_entropy_step(plain_model),
        make_sgd(plain_model.parameters(), lr, momentum, wd),
        train_loader(),
        runtime,
        plain_model,
        "plain training",
    )
    settings_tried = loader_settings(settings.workers, runtime.device.type == "cuda")
    conventional: dict[LoaderSetting, Trainer] = {}
    eval_data_loaders: dict[LoaderSetting, OnDevice] = {}
    for setting in settings_tried:
        model = watch(fresh(settings.seed))
        batches = data_loader(data.train, info, BATCH, train=True, setting=setting, seed=settings.seed)
        conventional[setting] = Trainer(
            cross_entropy_step(model),
            make_sgd(model.parameters(), lr, momentum, wd),
            OnDevice(batches, runtime),
            runtime,
            model,
            f"training (DataLoader, {setting.name})",
        )
        eval_data_loaders[setting] = OnDevice(
            data_loader(data.test, info, EVAL_BATCH, train=False, setting=setting), runtime
        )
    # Curve between two randomly initialised copies; only the bends train, wd acts on φ_θ(t).
    start, end = fresh(settings.seed + 1).state_dict(), fresh(settings.seed + 2).state_dict()
    curve = runtime.prepare(Curve(build(model_cfg, info), start, end, kind, num_bends))
    watch(curve.template)
    curve_trainer = curve_training(
        curve, curve_cfg.wd, curve_lr, curve_cfg.momentum, settings.seed, train_loader(), runtime, "curve training"
    )
    bn_model, bn_name = build_bn(model_cfg, info)
    bn_model = watch(runtime.prepare(bn_model))
    bn_batches = Loader(
        data.train, info, BN_BATCH, train=False, max_samples=settings.bn_images, channels_last=channels_last
    )
    eval_loader = Loader(data.test, info, EVAL_BATCH, train=False, channels_last=channels_last)
    # The other memory layout, same initialisation and data, timed in the same rounds: the measurement behind
    # the runtime's layout default (README "Speed"). Not probed: it runs off the runtime on purpose.
    other = dataclasses.replace(runtime, channels_last=not channels_last)
    torch.manual_seed(settings.seed)
    other_model = other.prepare(build(model_cfg, info))
    other_plain = Trainer(
        cross_entropy_step(other_model),
        make_sgd(other_model.parameters(), lr, momentum, wd),
        Loader(
            data.train, info, BATCH, train=True, seed=settings.seed, drop_last=True, channels_last=other.channels_last
        ),
        other,
        other_model,
        "plain training, other memory layout",
    )
    other_bn = other.prepare(build_bn(model_cfg, info)[0])
    other_bn_batches = Loader(
        data.train, info, BN_BATCH, train=False, max_samples=settings.bn_images, channels_last=other.channels_last
    )
    status("warming up")
    predict(plain_model.eval(), itertools.islice(eval_loader, 1), runtime)
    recalibrate(bn_model, itertools.islice(bn_batches, 1), runtime=runtime)

    n = settings.batches
    training: list[tuple[str, str, Trainer]] = [
        ("train_loader", "plain training, in-memory Loader", plain),
        ("curve_train", "curve training", curve_trainer),
        *[
            (f"train_dataloader_{s.key}", f"plain training, per-sample DataLoader ({s.name})", t)
            for s, t in conventional.items()
        ],
    ]
    evaluation: list[tuple[str, str, Batches]] = [
        ("eval_loader", "evaluation, in-memory Loader", eval_loader),
        *[
            (f"eval_dataloader_{s.key}", f"evaluation, per-sample DataLoader ({s.name})", b)
            for s, b in eval_data_loaders.items()
        ],
    ]
    runs: dict[str, list[float]] = {key: [] for key, _, _ in (*training, *evaluation)}
    runs["bn_recalibration"] = []
    runs["train_other_layout"], runs["bn_other_layout"], runs["train_one_thread"] = [], [], []
    runs["curve_plain_step_ratio"] = []
    threads = torch.get_num_threads()
    for r in range(settings.repeats):
        at = f"(round {r + 1}/{settings.repeats})"
        for key, what, trainer in rotated(training, r):
            runs[key].append(section(key, f"{what} {at}", lambda trainer=trainer: trainer.run(n)))
        for key, what, batches in rotated(evaluation, r):
            runs[key].append(
                section(key, f"{what} {at}", lambda batches=batches: eval_speed(plain_model, batches, runtime, n))
            )
        runs["bn_recalibration"].append(
            section(
                "bn_recalibration", f"BatchNorm recalibration {at}", lambda: bn_seconds(bn_model, bn_batches, runtime)
            )
        )
        status(f"the other memory layout {at}")
        runs["train_other_layout"].append(other_plain.run(n))
        runs["bn_other_layout"].append(bn_seconds(other_bn, other_bn_batches, other))
        status(f"plain and curve steps interleaved {at}")
        plain_step, curve_step = interleaved_steps([plain, curve_trainer], n, runtime)
        runs["curve_plain_step_ratio"].append(curve_step / plain_step)
        status(f"plain training on one thread {at}")
        runs["train_one_thread"].append(one_thread(lambda: plain.run(n)))

    rounds = settings.repeats
    best_train = best_setting({s: runs[f"train_dataloader_{s.key}"] for s in settings_tried})
    best_eval = best_setting({s: runs[f"eval_dataloader_{s.key}"] for s in settings_tried})
    peer_figures, peer_setup = {}, None
    if settings.peers:
        training.clear()  # the DataLoader trainers and the other layout's networks
        evaluation.clear()
        del conventional, eval_data_loaders, other_plain, other_bn
        release(runtime)
        peer_figures, peer_setup = measure_peers(
            settings, runtime, section, status, data, (plain, curve_trainer), (best_train, best_eval)
        )

    def mark(setting: LoaderSetting, best: LoaderSetting) -> str:
        return f"{setting.name}, best" if setting == best and len(settings_tried) > 1 else setting.name

    def loader_figures(kind: str, what: str, best: LoaderSetting) -> dict[str, Figure]:
        """The in-memory Loader, each DataLoader setting tried, and the paired speed-up against the best."""
        return {
            f"{kind}_loader": Figure(f"{what}, in-memory Loader", "images/s", runs[f"{kind}_loader"]),
            **{
                f"{kind}_dataloader_{s.key}": Figure(
                    f"{what}, per-sample DataLoader ({mark(s, best)})", "images/s", runs[f"{kind}_dataloader_{s.key}"]
                )
                for s in settings_tried
            },
            f"{kind}_speedup": paired_figure(
                f"{what} speed-up, Loader / best DataLoader ({best.name})",
                rounds,
                runs[f"{kind}_loader"],
                runs[f"{kind}_dataloader_{best.key}"],
            ),
        }

    figures = {
        **loader_figures("train", "training", best_train),
        **loader_figures("eval", "evaluation", best_eval),
        "curve_train": Figure(
            f"curve training ({kind}, {num_bends} bends), in-memory Loader", "images/s", runs["curve_train"]
        ),
        "curve_plain_ratio": paired_figure(
            "curve/plain time per image",
            rounds,
            runs["train_loader"],
            runs["curve_train"],
        ),
        "curve_plain_step_ratio": Figure(
            paired_label(f"curve/plain time per step, {n} steps of each interleaved one by one (median step)", rounds),
            "x",
            runs["curve_plain_step_ratio"],
            paired=True,
        ),
        "bn_recalibration": Figure(
            f"BN recalibration, {bn_batches.n} images ({bn_name})", "s", runs["bn_recalibration"]
        ),
        **layout_figures(runs, channels_last, rounds),
        "threads_train": paired_figure(
            f"training speed, {threads} torch threads (torch's default) / 1 thread",
            rounds,
            runs["train_loader"],
            runs["train_one_thread"],
        ),
        **peer_figures,
    }
    setup = {
        "dataset": info.name,
        "source": source,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "image": [info.channels, info.size, info.size],
        "augment": info.augment,
        "model": model_cfg.name,
        "model_args": dict(model_cfg.args),
        "parameters": sum(p.numel() for p in plain_model.parameters()),
        "train_batch": BATCH,
        "warmup_batches": WARMUP,
        "timed_batches": settings.batches,
        "train_images_per_run": settings.batches * BATCH,
        "eval_batch": EVAL_BATCH,
        "eval_images_per_run": min(settings.batches * EVAL_BATCH, len(data.test)),
        "repeats": settings.repeats,
        "workers": settings.workers,
        "dataloader_settings": [s.as_dict() for s in settings_tried],
        "dataloader_best": {
            "train": {**best_train.as_dict(), "figure": f"train_dataloader_{best_train.key}"},
            "eval": {**best_eval.as_dict(), "figure": f"eval_dataloader_{best_eval.key}"},
            "chosen_by": "highest median images/s over the rounds",
        },
        "curve": f"{kind}, {num_bends} bends",
        "peers": peer_setup,
    }
    return figures, setup


def measure_peers(
    settings: Settings,
    runtime: Runtime,
    section: Sections,
    status: Callable[[str], Any],
    data: Prepared,
    trainers: tuple[Trainer, Trainer],
    best: tuple[LoaderSetting, LoaderSetting],
) -> tuple[dict[str, Figure], dict[str, Any]]:
    """modeconn against the official code's loops (:mod:`stages.peers`), paired per round on the same model,
    data, initialisation and optimiser settings: training, curve training and one evaluation point.

    The official side runs as that code does: per-sample DataLoader (the best setting of the loader figures),
    NCHW, float32, batch 128 everywhere; modeconn's under the runtime. The point is on the BatchNorm variant of
    the model (a point's recalibration is a no-op without BN), between two random initialisations, at t = 0.5:
    BN recalibration over ``--bn-images`` training images, then the train pass over the same number and the
    whole test split."""
    data_cfg, model_cfg, train_cfg, curve_cfg = read_sections(settings.params, "data", "model", "train", "curve")
    info, device, n = data.info, runtime.device, settings.batches
    plain, curve_trainer = trainers
    best_train, best_eval = best
    wd, kind, num_bends = train_cfg.wd, curve_cfg.type, curve_cfg.num_bends  # wd: plain training's
    status("building the official-style reference")

    def official_model(seed: int, bn: bool = False) -> nn.Module:
        torch.manual_seed(seed)
        return (build_bn(model_cfg, info)[0] if bn else build(model_cfg, info)).to(device)

    def official_loader(split: Split, batch: int, train: bool, setting: LoaderSetting, count: int | None = None):
        if count is not None and count < len(split):
            split = Split(split.x[:count], split.y[:count])
        return data_loader(split, info, batch, train=train, setting=setting, seed=settings.seed)

    model = official_model(settings.seed)
    official_plain = peers.OfficialTrainer(
        model,
        make_sgd(model.parameters(), train_cfg.lr, train_cfg.momentum, wd),
        official_loader(data.train, BATCH, True, best_train),
        device,
    )
    start, end = official_model(settings.seed + 1).state_dict(), official_model(settings.seed + 2).state_dict()
    curve_net = peers.CurveNet(official_model(settings.seed), start, end, kind, num_bends).to(device)
    official_curve = peers.OfficialTrainer(
        curve_net,
        make_sgd([p for p in curve_net.parameters() if p.requires_grad], curve_cfg.lr, curve_cfg.momentum, 0.0),
        official_loader(data.train, BATCH, True, best_train),
        device,
        regularizer=peers.curve_regularizer(curve_cfg.wd),
    )
    # The evaluation point, both ways, on the BN model between the same two random initialisations.
    bn_start = official_model(settings.seed + 1, bn=True).state_dict()
    bn_end = official_model(settings.seed + 2, bn=True).state_dict()
    bn_template, bn_name = build_bn(model_cfg, info)
    bn_curve = runtime.prepare(Curve(bn_template, bn_start, bn_end, kind, num_bends))
    section.probe.watch(bn_curve.template)
    official_net = peers.CurveNet(official_model(settings.seed, bn=True), bn_start, bn_end, kind, num_bends).to(device)
    del bn_start, bn_end
    count = min(settings.bn_images, len(data.train))
    point = eval_batches(
        data,
        BN_BATCH,
        bn_samples=count,
        train_samples=count,
        test_samples=0,
        seed=settings.seed,
        channels_last=runtime.channels_last,
    )
    official_point = (
        official_loader(data.train, BATCH, False, best_eval, count),
        official_loader(data.train, BATCH, False, best_eval, count),
        official_loader(data.test, BATCH, False, best_eval),
    )

    def official_point_speed() -> float:
        return peers.point_speed(official_net, 0.5, *official_point, curve_cfg.wd, device)[0]

    def official(fn: Callable[[], float]) -> Callable[[], float]:
        """The reference as the official scripts run it: on CUDA with cudnn.benchmark on (train.py, eval_curve.py)."""

        def timed() -> float:
            benchmark = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = device.type == "cuda" or benchmark
            try:
                return fn()
            finally:
                torch.backends.cudnn.benchmark = benchmark

        return timed

    groups: list[tuple[tuple[str, str, Callable[[], float]], tuple[str, str, Callable[[], float]]]] = [
        (
            ("peer_modeconn_train", "modeconn training", lambda: plain.run(n)),
            ("peer_train", "official-style training", official(lambda: official_plain.run(n))),
        ),
        (
            ("peer_modeconn_curve", "modeconn curve training", lambda: curve_trainer.run(n)),
            ("peer_curve_train", "official-style CurveNet training", official(lambda: official_curve.run(n))),
        ),
        (
            ("peer_modeconn_point", "modeconn evaluation point", lambda: point_speed(bn_curve, 0.5, point, runtime)),
            ("peer_point", "official-style evaluation point", official(official_point_speed)),
        ),
    ]
    runs: dict[str, list[float]] = {key: [] for group in groups for key, _, _ in group}
    for r in range(settings.repeats):
        at = f"(round {r + 1}/{settings.repeats})"
        # Each pair back to back, the pairs in a rotating order, which of the two goes first alternating.
        for group in rotated(groups, r):
            for key, what, fn in group if r % 2 == 0 else reversed(group):
                if key.startswith("peer_modeconn"):
                    runs[key].append(section(key, f"{what} {at}", fn))
                else:  # off the runtime on purpose (NCHW, float32): not probed
                    status(f"{what} {at}")
                    runs[key].append(fn())

    rounds = settings.repeats
    images = f"BN {point.bn.n} + train {point.train.n} + test {point.test.n} images"
    figures = {
        "peer_modeconn_train": Figure(
            "modeconn training (in-memory Loader, the runtime), rounds of the official-style comparison",
            "images/s",
            runs["peer_modeconn_train"],
        ),
        "peer_train": Figure(
            f"official-style training loop (per-sample DataLoader, {best_train.name}, NCHW)",
            "images/s",
            runs["peer_train"],
        ),
        "peer_train_speedup": paired_figure(
            "training speed-up, modeconn / official-style loop",
            rounds,
            runs["peer_modeconn_train"],
            runs["peer_train"],
        ),
        "peer_modeconn_curve": Figure(
            "modeconn curve training, rounds of the official-style comparison", "images/s", runs["peer_modeconn_curve"]
        ),
        "peer_curve_train": Figure(
            f"official-style CurveNet training ({kind}, {num_bends} bends, weights formed per layer)",
            "images/s",
            runs["peer_curve_train"],
        ),
        "peer_curve_speedup": paired_figure(
            "curve training speed-up, modeconn / official-style CurveNet",
            rounds,
            runs["peer_modeconn_curve"],
            runs["peer_curve_train"],
        ),
        "peer_curve_plain_ratio": paired_figure(
            "official-style curve/plain time per image",
            rounds,
            runs["peer_train"],
            runs["peer_curve_train"],
        ),
        "peer_modeconn_point": Figure(
            f"evaluation point, modeconn ({bn_name}, {images})", "images/s", runs["peer_modeconn_point"]
        ),
        "peer_point": Figure(
            f"evaluation point, official-style (update_bn + test, DataLoader {best_eval.name}, batch {BATCH})",
            "images/s",
            runs["peer_point"],
        ),
        "peer_point_speedup": paired_figure(
            "evaluation point speed-up, modeconn / official-style",
            rounds,
            runs["peer_modeconn_point"],
            runs["peer_point"],
        ),
    }
    setup = {
        "reference": "stages/peers.py: the official code's utils.train, CurveNet, update_bn and utils.test, re-written",
        "train_loader": best_train.as_dict(),
        "eval_loader": best_eval.as_dict(),
        "batch": BATCH,
        "point": {
            "t": 0.5,
            "model": bn_name,
            "bn_images": point.bn.n,
            "train_images": point.train.n,
            "test_images": point.test.n,
        },
    }
    return figures, setup


def one_thread(fn: Callable[[], float]) -> float:
    """``fn()`` with torch on one intra-op thread (the thread count restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def layout_figures(runs: dict[str, list[float]], channels_last: bool, rounds: int) -> dict[str, Figure]:
    """channels_last against the contiguous (NCHW) layout, paired per round: training images/s and BN
    recalibration time, whichever of the two the runtime uses."""
    own, other = (runs["train_loader"], runs["bn_recalibration"]), (runs["train_other_layout"], runs["bn_other_layout"])
    (nhwc_train, nhwc_bn), (nchw_train, nchw_bn) = (own, other) if channels_last else (other, own)
    return {
        "layout_train": paired_figure(
            "training speed, channels_last / contiguous (> 1: channels_last faster)",
            rounds,
            nhwc_train,
            nchw_train,
        ),
        "layout_bn": paired_figure(
            "BN recalibration speed, channels_last / contiguous",
            rounds,
            nchw_bn,
            nhwc_bn,
        ),
    }


def measure_paper(
    settings: Settings, runtime: Runtime, section: Sections, status: Callable[[str], Any]
) -> tuple[dict[str, Figure], dict[str, Any]]:
    """Figure 6: the paper's VGG16 on CIFAR-shaped synthetic data (VGG16-BN for the evaluation point)."""
    cuda = runtime.device.type == "cuda"
    n = settings.paper_batches or (settings.batches if cuda else PAPER_CPU_BATCHES)
    warmup = min(WARMUP, n)
    n_train = min(50_000, BATCH * (warmup + n))  # every timed batch a fresh image, up to CIFAR-10's size
    n_point = n * BATCH  # images of each evaluation pass of a point (BN, train, test)
    n_test = min(10_000, n_point)
    watch, channels_last = section.probe.watch, runtime.channels_last

    status("making the paper model's data")
    data = paper_data(n_train, n_test, settings.seed).to(runtime.device)
    info = data.info

    def fresh(name: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = create_model(name, PAPER_CLASSES, in_channels=PAPER_CHANNELS, input_size=PAPER_SIZE)
        return runtime.prepare(model)

    def train_loader() -> Loader:
        return Loader(
            data.train, info, BATCH, train=True, seed=settings.seed, drop_last=True, channels_last=channels_last
        )

    model = watch(fresh(PAPER_MODEL, settings.seed))
    plain = Trainer(
        cross_entropy_step(model),
        make_sgd(model.parameters(), PAPER_LR, PAPER_MOMENTUM, PAPER_WD),
        train_loader(),
        runtime,
        model,
        f"{PAPER_MODEL} training",
        warmup=warmup,
    )
    start, end = fresh(PAPER_MODEL, settings.seed + 1).state_dict(), fresh(PAPER_MODEL, settings.seed + 2).state_dict()
    curve = runtime.prepare(Curve(fresh(PAPER_MODEL, settings.seed), start, end, PAPER_CURVE, PAPER_BENDS))
    watch(curve.template)
    curve_trainer = curve_training(
        curve,
        PAPER_WD,
        PAPER_CURVE_LR,
        PAPER_MOMENTUM,
        settings.seed,
        train_loader(),
        runtime,
        f"{PAPER_MODEL} curve training",
        warmup,
    )
    del start, end
    # The evaluation point: the middle of a VGG16-BN curve (BN recalibration is a no-op on VGG16).
    bn_start = fresh(PAPER_BN_MODEL, settings.seed + 1).state_dict()
    bn_end = fresh(PAPER_BN_MODEL, settings.seed + 2).state_dict()
    bn_curve = runtime.prepare(Curve(fresh(PAPER_BN_MODEL, settings.seed), bn_start, bn_end, PAPER_CURVE, PAPER_BENDS))
    watch(bn_curve.template)
    del bn_start, bn_end
    point = eval_batches(
        data,
        BN_BATCH,
        bn_samples=n_point,
        train_samples=n_point,
        test_samples=n_point,
        seed=settings.seed,
        channels_last=channels_last,
    )
    status("warming up the paper model")
    predict(bn_curve.template.eval(), itertools.islice(point.test, 1), runtime)
    recalibrate(bn_curve.template, itertools.islice(point.bn, 1), runtime=runtime)

    training = [
        ("paper_train", f"{PAPER_MODEL} training", plain),
        ("paper_curve_train", f"{PAPER_MODEL} curve training", curve_trainer),
    ]
    runs: dict[str, list[float]] = {"paper_train": [], "paper_curve_train": [], "paper_point": []}
    for r in range(settings.repeats):
        at = f"(round {r + 1}/{settings.repeats})"
        for key, what, trainer in rotated(training, r):
            runs[key].append(section(key, f"{what} {at}", lambda trainer=trainer: trainer.run(n)))
        runs["paper_point"].append(
            section(
                "paper_point",
                f"{PAPER_BN_MODEL} evaluation point {at}",
                lambda: point_speed(bn_curve, 0.5, point, runtime),
            )
        )

    shape = f"{PAPER_CHANNELS}x{PAPER_SIZE}x{PAPER_SIZE}"
    curve_name = f"{PAPER_CURVE}, {PAPER_BENDS} bends"
    figures = {
        "paper_train": Figure(f"paper model {PAPER_MODEL}, {shape}: training", "images/s", runs["paper_train"]),
        "paper_curve_train": Figure(
            f"paper model {PAPER_MODEL}, {shape}: curve training ({curve_name})", "images/s", runs["paper_curve_train"]
        ),
        "paper_curve_plain_ratio": paired_figure(
            f"paper model {PAPER_MODEL}: curve/plain time per image",
            settings.repeats,
            runs["paper_train"],
            runs["paper_curve_train"],
        ),
        "paper_point": Figure(
            f"paper model {PAPER_BN_MODEL} (VGG16 has no BN), {shape}: one evaluation point = BN recalibration "
            f"({point.bn.n}) + evaluation ({point.train.n} train + {point.test.n} test images)",
            "images/s",
            runs["paper_point"],
        ),
    }
    setup = {
        "model": PAPER_MODEL,
        "bn_model": PAPER_BN_MODEL,
        "parameters": sum(p.numel() for p in model.parameters()),
        "bn_parameters": sum(p.numel() for p in bn_curve.template.parameters()),
        "data": f"synthetic uint8 {shape}, {PAPER_CLASSES} classes, made in code",
        "n_train": len(data.train),
        "n_test": len(data.test),
        "augment": PAPER_AUGMENT,
        "train_batch": BATCH,
        "warmup_batches": warmup,
        "timed_batches": n,
        "lr": PAPER_LR,
        "curve_lr": PAPER_CURVE_LR,
        "momentum": PAPER_MOMENTUM,
        "wd": PAPER_WD,
        "curve": f"{curve_name}, between two random initialisations",
        "point": {"t": 0.5, "bn_images": point.bn.n, "train_images": point.train.n, "test_images": point.test.n},
        "eval_batch": BN_BATCH,
    }
    return figures, setup


def run(settings: Settings, status: Callable[[str], Any] | None = None) -> Result:
    """Measure everything; ``status(message)`` is told what is being measured."""
    status = status or (lambda message: None)
    seed_everything(settings.seed)
    runtime = Runtime.resolve(settings.device, settings.precision, settings.channels_last)
    host = machine(runtime)  # before any work: the memory of the imports
    # Other processes on the same cores slow every figure (and collapse OpenMP's throughput).
    others, started = OtherLoad(), time.perf_counter()
    section = Sections(runtime, Probe(runtime), status)

    figures, setup = measure_default(settings, runtime, section, status)
    paper = runtime.device.type == "cuda" if settings.paper_model is None else settings.paper_model
    setup["paper"] = None
    if paper:
        release(runtime)  # the default model's networks and data, gone with measure_default's frame
        paper_figures, setup["paper"] = measure_paper(settings, runtime, section, status)
        figures.update(paper_figures)
    release(runtime)

    host["other_processes_cpus"] = others.cpus()
    host["bench_seconds"] = time.perf_counter() - started
    figures["peak_rss"] = Figure("peak resident memory, this process", "MiB", [peak_rss_mib(resource.RUSAGE_SELF)])
    if any(s["workers"] > 0 for s in setup["dataloader_settings"]):
        figures["peak_rss_worker"] = Figure(
            "peak resident memory, largest DataLoader worker (shared pages too)",
            "MiB",
            [peak_rss_mib(resource.RUSAGE_CHILDREN)],
        )
    figures.update(section.memory_figures({k: f.label for k, f in figures.items()}))
    setup["runtime"] = runtime.as_dict()
    setup["runtime_expected"] = section.probe.expected()
    setup["runtime_observed"] = section.probe.seen
    setup["runtime_mismatches"] = section.probe.mismatches()
    return Result(host, setup, figures)


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _spread(f: Figure) -> str:
    return f"{_fmt(min(f.runs))}–{_fmt(max(f.runs))}" if len(f.runs) > 1 else ""


def header_lines(result: Result) -> list[str]:
    m, s = result.machine, result.setup
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    args = ", ".join(f"{k}={v}" for k, v in s["model_args"].items())
    others = "?" if m["other_processes_cpus"] is None else f"{m['other_processes_cpus']:.2f}"
    tried = ", ".join(d["setting"] for d in s["dataloader_settings"])
    best = s["dataloader_best"]
    checked = (
        f"checked in every section: inputs {s['runtime_expected']['memory_format']}, conv weights "
        f"{s['runtime_expected']['weight_memory_format']}, outputs {s['runtime_expected']['output_dtype']}"
        if not s["runtime_mismatches"]
        else "NOT every section ran so (see the warning)"
    )
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['torch_threads']} torch threads, "
        f"device {m['device']}{gpu}, torch {m['torch']}, Python {m['python']}; "
        f"{m['rss_after_imports_mib']:,.0f} MiB resident after imports",
        f"{m['runtime']}; {checked}",
        f"data:    {s['dataset']} from {s['source']}: {s['n_train']} train / {s['n_test']} test images of "
        f"{'x'.join(map(str, s['image']))}, augmentation {s['augment']}",
        f"model:   {s['model']}({args}), {s['parameters']:,} parameters; curve: {s['curve']}",
        f"loaders: per-sample DataLoader tried with {tried}; best (highest median images/s) for training: "
        f"{best['train']['setting']}, for evaluation: {best['eval']['setting']}",
    ]
    p = s.get("paper")
    if p is None:
        lines.append("paper:   VGG16 figures off (on by default on CUDA; --paper-model measures them here)")
    else:
        lines.append(
            f"paper:   {p['model']} ({p['parameters']:,} parameters) on {p['data']}, {p['n_train']} train / "
            f"{p['n_test']} test, augmentation {p['augment']}; training {p['timed_batches']} batch(es) of "
            f"{p['train_batch']} after {p['warmup_batches']} warm-up (lr {p['lr']:g}, curve lr {p['curve_lr']:g}, "
            f"wd {p['wd']:g}); curve {p['curve']}; evaluation point at t={p['point']['t']:g} on {p['bn_model']} "
            f"(VGG16 has no BatchNorm), in batches of {p['eval_batch']}"
        )
    lines.append(
        f"method:  training {s['timed_batches']} batches of {s['train_batch']} after {s['warmup_batches']} "
        f"warm-up; evaluation {s['eval_images_per_run']} test images in batches of {s['eval_batch']}; "
        f"median of {s['repeats']} interleaved rounds [min–max]; ratios paired per round; "
        f"{m['bench_seconds']:.0f} s, other processes used {others} CPUs meanwhile",
    )
    return lines


def warning_lines(result: Result) -> list[str]:
    lines = []
    mismatches = result.setup.get("runtime_mismatches") or []
    if mismatches:
        lines.append("warning: not every section ran under the runtime: " + "; ".join(mismatches))
    busy = result.machine.get("other_processes_cpus")
    if busy is not None and busy > 0.25:
        lines.append(
            f"warning: other processes kept {busy:.1f} CPUs busy on average during the bench; the "
            "figures are low and noisy. Rerun on an idle machine."
        )
    return lines


def report(result: Result, console: Console) -> None:
    """A rich table on a terminal; aligned plain text otherwise (logs, pipes, CliRunner)."""
    lines = header_lines(result) + warning_lines(result)
    if console.is_terminal:
        for line in lines:
            console.print(line, highlight=False, markup=False)
        table = Table(title="modeconn bench")
        for column, justify in (("what", "left"), ("value", "right"), ("unit", "left"), ("range of runs", "right")):
            table.add_column(column, justify=justify)
        for f in result.figures.values():
            table.add_row(f.label, _fmt(f.value), f.unit, _spread(f))
        console.print(table)
        return
    width = max(len(f.label) for f in result.figures.values())
    for line in lines:
        print(line)
    print()
    for f in result.figures.values():
        spread = f"  [{_spread(f)}]" if len(f.runs) > 1 else ""
        print(f"{f.label:<{width}}  {_fmt(f.value):>9} {f.unit}{spread}")


@contextmanager
def _status(console: Console) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on a terminal; silent otherwise."""
    if not console.is_terminal:
        yield lambda message: None
        return
    with console.status("") as spinner:
        yield lambda message: spinner.update(f"measuring: {message}")


def main(
    params: Path = typer.Option(Path("params.yaml"), "--params", help="The params file (data and model sections)."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    channels_last: str = ChannelsLastOpt,
    batches: int = typer.Option(
        Settings.batches,
        "--batches",
        help="Timed training batches (of 128) per run; also caps the evaluation batches (of 1000).",
    ),
    repeats: int = typer.Option(
        Settings.repeats, "--repeats", help="Interleaved rounds; a figure is the median over them."
    ),
    workers: int = typer.Option(
        Settings.workers,
        "--workers",
        help=f"A DataLoader worker count to try besides {' and '.join(map(str, USUAL_WORKERS))} (always tried).",
    ),
    bn_images: int = typer.Option(BN_IMAGES, "--bn-images", help="Training images in the BN recalibration pass."),
    dataset: str = typer.Option(None, "--dataset", help="Use this dataset instead of data.name (e.g. synthetic)."),
    augment: str = typer.Option(
        None, "--augment", help="Use this augmentation instead of data.augment (none, crop, flip, crop_flip, default)."
    ),
    paper_model: bool | None = typer.Option(
        None,
        "--paper-model/--no-paper-model",
        help="Also measure the paper's VGG16 on 3x32x32 synthetic data (default: on for CUDA, off elsewhere).",
    ),
    paper_batches: int = typer.Option(
        None,
        "--paper-batches",
        help=f"Timed batches (of 128) of the VGG16 figures (default: --batches on CUDA, {PAPER_CPU_BATCHES} on CPU).",
    ),
    peers_: bool = typer.Option(
        True,
        "--peers/--no-peers",
        help="Also time the official code's training, curve training and evaluation point (stages/peers.py).",
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Measure training, evaluation, curve-training and BN-recalibration speed of the default model and data."""
    out = Console()
    try:
        settings = Settings(
            params=params,
            device=device,
            precision=precision,
            channels_last=channels_last,
            batches=batches,
            repeats=repeats,
            workers=workers,
            bn_images=bn_images,
            dataset=dataset,
            augment=augment,
            paper_model=paper_model,
            paper_batches=paper_batches,
            peers=peers_,
        )
        with _status(Console(stderr=True)) as status:
            result = run(settings, status)
    except ModeconnError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    report(result, out)
    if json_out is not None:
        atomic_write_json(json_out, result.as_dict())


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
