"""Throughput of the pipeline's pieces on the default model and data: ``python -m stages.bench``.

A command beside the stages (not a stage, not the library): it reads params.yaml through the stages'
section readers, so it measures what the pipeline would run.

For the ``data`` and ``model`` sections of params.yaml this measures:

1. training images/s with the in-memory :class:`modeconn.data.Loader` (uint8 data on the device;
   shuffle, augmentation and normalisation done per batch);
2. the same with the conventional per-sample path: a ``torch.utils.data.Dataset`` that, like
   ``torchvision.datasets.FashionMNIST``, makes one PIL image per sample and runs the
   ``torchvision.transforms.v2`` pipeline on it (RandomCrop with 4-pixel padding and
   RandomHorizontalFlip as the augmentation asks, then ToImage, ToDtype, Normalize), behind a
   ``DataLoader`` with worker processes;
3. evaluation images/s (no grad, batch 1000, the test split) both ways;
4. curve training images/s (paper, Sec. 3: a fresh t ~ U(0, 1) per minibatch and the network run
   at w = φ_θ(t), eq. 2, through ``functional_call``) and its time per image relative to plain
   training. A curve step is one forward/backward of the network plus O(num_bends · |w|) to form
   φ_θ(t) and send the gradient to the bends, so the ratio should stay near 1 (the reference
   figure here is 1.5);
5. the time of one BatchNorm recalibration pass (:func:`modeconn.bn.recalibrate`) over 10k
   training images, for a BatchNorm variant of the model;
6. peak resident memory of the process and of its largest DataLoader worker.

The augmentation is ``data.augment`` (``--augment`` overrides it) on both paths. Training figures
are taken over ``--batches`` batches of 128 after 3 warm-up batches, with the optimiser settings
of the ``train`` and ``curve`` sections; each figure is the median of ``--repeats`` interleaved
runs, reported with its range. Worker start-up is in the evaluation figures of the DataLoader path
(a pass starts new workers, as every evaluation in a pipeline does) but not in its training figure
(they start in the warm-up). The validation split is not carved out: it changes no speed.
Other processes on the same CPUs spoil every figure (OpenMP threads that wait for a busy core
slow down many-fold); the report says how many CPUs they used meanwhile and warns.
"""

from __future__ import annotations

import dataclasses
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
from modeconn.data import DATASETS, EVAL_BATCH, DatasetInfo, Loader, Prepared, Split, prepare
from modeconn.errors import ConfigError, ModeconnError
from modeconn.io import atomic_write_json
from modeconn.models import create_model, from_spec
from modeconn.runtime import Runtime, seed_everything
from modeconn.train import cross_entropy_step, make_sgd, predict, train_epoch

from .common import ChannelsLastOpt, DeviceOpt, PrecisionOpt
from .config import DataConfig, ModelConfig, read_sections

BATCH = 128  # training batch, as in params.yaml's train and curve sections
WARMUP = 3  # batches before any training measurement
BN_IMAGES = 10_000  # images in the recalibration pass
BN_BATCH = 500  # its batch: eval.batch_size of params.yaml

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure and how much; the defaults take about a minute on 2 CPU cores."""

    params: Path = Path("params.yaml")
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA)
    channels_last: str = "auto"  # 1 | 0 | auto (on for CUDA)
    batches: int = 100  # timed training batches per run
    repeats: int = 3  # interleaved runs per figure; the median is reported
    workers: int = 2  # DataLoader worker processes of the per-sample path
    bn_images: int = BN_IMAGES
    dataset: str | None = None  # overrides data.name (e.g. "synthetic")
    augment: str | None = None  # overrides data.augment (e.g. "crop_flip")
    seed: int = 0

    def __post_init__(self):
        for key in ("batches", "repeats", "bn_images"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (load in the main process) or more, got {self.workers}")


@dataclasses.dataclass
class Figure:
    """One measured quantity: a run per repeat, reported as the median."""

    label: str
    unit: str
    runs: list[float]

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
                k: {"label": f.label, "unit": f.unit, "value": f.value, "runs": f.runs} for k, f in self.figures.items()
            },
        }


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


def data_loader(
    split: Split, info: DatasetInfo, batch_size: int, *, train: bool, workers: int, runtime: Runtime, seed: int = 0
) -> torch.utils.data.DataLoader:
    dataset = PerSampleDataset(split, transforms_v2(info, info.augment if train else "none"))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=workers,
        drop_last=train,
        pin_memory=runtime.device.type == "cuda",
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
    ):
        self.loss_fn, self.optimizer, self.batches, self.runtime = loss_fn, optimizer, batches, runtime
        self.module, self.what = module, what
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
            self._train(stream, WARMUP)
            return self._train(stream, n)
        finally:
            stream.close()  # a DataLoader's workers exit here and are reaped


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


def machine(runtime: Runtime) -> dict[str, Any]:
    device = runtime.device
    info = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rss_after_imports_mib": peak_rss_mib(resource.RUSAGE_SELF),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(settings: Settings, status: Callable[[str], Any] | None = None) -> Result:
    """Measure everything; ``status(message)`` is told what is being measured."""
    status = status or (lambda message: None)
    seed_everything(settings.seed)
    runtime = Runtime.resolve(settings.device, settings.precision, settings.channels_last)
    device = runtime.device
    host = machine(runtime)  # before any work: the memory of the imports
    # Other processes on the same cores slow every figure (and collapse OpenMP's throughput).
    others, started = OtherLoad(), time.perf_counter()
    data_cfg, model_cfg, train_cfg, curve_cfg = read_sections(settings.params, "data", "model", "train", "curve")
    lr, momentum, wd = train_cfg.lr, train_cfg.momentum, train_cfg.wd
    curve_lr, kind, num_bends = curve_cfg.lr, curve_cfg.type, curve_cfg.num_bends

    status("loading the data")
    data, source = load_data(data_cfg, settings.dataset, settings.augment)
    info = data.info
    data = data.to(device)
    channels_last = runtime.channels_last

    def fresh(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return runtime.prepare(build(model_cfg, info))

    # Plain training, both data paths, from the same initialisation.
    plain_model, conv_model = fresh(settings.seed), fresh(settings.seed)
    plain = Trainer(
        cross_entropy_step(plain_model),
        make_sgd(plain_model.parameters(), lr, momentum, wd),
        Loader(data.train, info, BATCH, train=True, seed=settings.seed, drop_last=True, channels_last=channels_last),
        runtime,
        plain_model,
        "plain training",
    )
    conventional = Trainer(
        cross_entropy_step(conv_model),
        make_sgd(conv_model.parameters(), lr, momentum, wd),
        OnDevice(
            data_loader(
                data.train, info, BATCH, train=True, workers=settings.workers, runtime=runtime, seed=settings.seed
            ),
            runtime,
        ),
        runtime,
        conv_model,
        "training (DataLoader)",
    )
    # Curve between two randomly initialised copies; only the bends train, wd acts on φ_θ(t).
    start, end = fresh(settings.seed + 1).state_dict(), fresh(settings.seed + 2).state_dict()
    curve = runtime.prepare(Curve(build(model_cfg, info), start, end, kind, num_bends))
    curve_trainer = Trainer(
        curve_loss(curve, wd, torch.Generator().manual_seed(settings.seed)),
        make_sgd(curve.bends.parameters(), curve_lr, momentum, 0.0),
        Loader(data.train, info, BATCH, train=True, seed=settings.seed, drop_last=True, channels_last=channels_last),
        runtime,
        curve.template,
        "curve training",
    )
    bn_model, bn_name = build_bn(model_cfg, info)
    bn_model = runtime.prepare(bn_model)
    bn_batches = Loader(
        data.train, info, BN_BATCH, train=False, max_samples=settings.bn_images, channels_last=channels_last
    )
    eval_loader = Loader(data.test, info, EVAL_BATCH, train=False, channels_last=channels_last)
    eval_data_loader = data_loader(data.test, info, EVAL_BATCH, train=False, workers=settings.workers, runtime=runtime)
    status("warming up")
    predict(plain_model.eval(), itertools.islice(eval_loader, 1), runtime)
    recalibrate(bn_model, itertools.islice(bn_batches, 1), runtime=runtime)

    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "train_loader",
            "train_dataloader",
            "train_speedup",
            "curve_train",
            "curve_plain_ratio",
            "eval_loader",
            "eval_dataloader",
            "eval_speedup",
            "bn_recalibration",
        )
    }
    for r in range(1, settings.repeats + 1):
        at = f"(run {r}/{settings.repeats})"
        status(f"plain training, in-memory Loader {at}")
        runs["train_loader"].append(plain.run(settings.batches))
        status(f"curve training {at}")
        runs["curve_train"].append(curve_trainer.run(settings.batches))
        status(f"plain training, per-sample DataLoader {at}")
        runs["train_dataloader"].append(conventional.run(settings.batches))
        runs["train_speedup"].append(runs["train_loader"][-1] / runs["train_dataloader"][-1])
        runs["curve_plain_ratio"].append(runs["train_loader"][-1] / runs["curve_train"][-1])
        status(f"evaluation {at}")
        runs["eval_loader"].append(eval_speed(plain_model, eval_loader, runtime, settings.batches))
        runs["eval_dataloader"].append(
            eval_speed(plain_model, OnDevice(eval_data_loader, runtime), runtime, settings.batches)
        )
        runs["eval_speedup"].append(runs["eval_loader"][-1] / runs["eval_dataloader"][-1])
        status(f"BatchNorm recalibration {at}")
        runs["bn_recalibration"].append(bn_seconds(bn_model, bn_batches, runtime))

    host["other_processes_cpus"] = others.cpus()
    host["bench_seconds"] = time.perf_counter() - started
    n_train, n_eval = settings.batches * BATCH, min(settings.batches * EVAL_BATCH, len(data.test))
    labels = {
        "train_loader": ("training, in-memory Loader", "images/s"),
        "train_dataloader": (f"training, per-sample DataLoader ({settings.workers} workers)", "images/s"),
        "train_speedup": ("training speed-up, Loader / DataLoader", "x"),
        "eval_loader": ("evaluation, in-memory Loader", "images/s"),
        "eval_dataloader": (f"evaluation, per-sample DataLoader ({settings.workers} workers)", "images/s"),
        "eval_speedup": ("evaluation speed-up, Loader / DataLoader", "x"),
        "curve_train": (f"curve training ({kind}, {num_bends} bends), in-memory Loader", "images/s"),
        "curve_plain_ratio": ("curve/plain time ratio (per image)", "x"),
        "bn_recalibration": (f"BN recalibration, {bn_batches.n} images ({bn_name})", "s"),
    }
    figures = {k: Figure(*labels[k], runs[k]) for k in labels}
    figures["peak_rss"] = Figure("peak resident memory, this process", "MiB", [peak_rss_mib(resource.RUSAGE_SELF)])
    if settings.workers > 0:
        figures["peak_rss_worker"] = Figure(
            "peak resident memory, largest DataLoader worker (shared pages too)",
            "MiB",
            [peak_rss_mib(resource.RUSAGE_CHILDREN)],
        )
    if device.type == "cuda":
        figures["cuda_peak"] = Figure(
            "peak CUDA memory allocated", "MiB", [torch.cuda.max_memory_allocated(device) / 2**20]
        )
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
        "train_images_per_run": n_train,
        "eval_batch": EVAL_BATCH,
        "eval_images_per_run": n_eval,
        "repeats": settings.repeats,
        "workers": settings.workers,
        "curve": f"{kind}, {num_bends} bends",
    }
    return Result(host, setup, figures)


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def header_lines(result: Result) -> list[str]:
    m, s = result.machine, result.setup
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    args = ", ".join(f"{k}={v}" for k, v in s["model_args"].items())
    others = "?" if m["other_processes_cpus"] is None else f"{m['other_processes_cpus']:.2f}"
    return [
        f"machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['torch_threads']} torch threads, "
        f"device {m['device']}{gpu}, torch {m['torch']}, Python {m['python']}; "
        f"{m['rss_after_imports_mib']:,.0f} MiB resident after imports",
        f"data:    {s['dataset']} from {s['source']}: {s['n_train']} train / {s['n_test']} test images of "
        f"{'x'.join(map(str, s['image']))}, augmentation {s['augment']}",
        f"model:   {s['model']}({args}), {s['parameters']:,} parameters; curve: {s['curve']}",
        f"method:  training {s['timed_batches']} batches of {s['train_batch']} after {s['warmup_batches']} "
        f"warm-up; evaluation {s['eval_images_per_run']} test images in batches of {s['eval_batch']}; "
        f"median of {s['repeats']} interleaved runs [min-max]; {m['bench_seconds']:.0f} s, other processes "
        f"used {others} CPUs meanwhile",
    ]


def report(result: Result, console: Console) -> None:
    """A rich table on a terminal; aligned plain text otherwise (logs, pipes, CliRunner)."""
    lines = header_lines(result)
    busy = result.machine.get("other_processes_cpus")
    if busy is not None and busy > 0.25:
        lines.append(
            f"warning: other processes kept {busy:.1f} CPUs busy on average during the bench; the "
            "figures are low and noisy. Rerun on an idle machine."
        )
    if console.is_terminal:
        for line in lines:
            console.print(line, highlight=False, markup=False)
        table = Table(title="modeconn bench")
        for column, justify in (("what", "left"), ("value", "right"), ("unit", "left"), ("range of runs", "right")):
            table.add_column(column, justify=justify)
        for f in result.figures.values():
            spread = f"{_fmt(min(f.runs))}-{_fmt(max(f.runs))}" if len(f.runs) > 1 else ""
            table.add_row(f.label, _fmt(f.value), f.unit, spread)
        console.print(table)
        return
    width = max(len(f.label) for f in result.figures.values())
    for line in lines:
        print(line)
    print()
    for f in result.figures.values():
        spread = f"  [{_fmt(min(f.runs))}-{_fmt(max(f.runs))}]" if len(f.runs) > 1 else ""
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
    repeats: int = typer.Option(Settings.repeats, "--repeats", help="Runs per figure; the median is reported."),
    workers: int = typer.Option(Settings.workers, "--workers", help="DataLoader workers of the per-sample path."),
    bn_images: int = typer.Option(BN_IMAGES, "--bn-images", help="Training images in the BN recalibration pass."),
    dataset: str = typer.Option(None, "--dataset", help="Use this dataset instead of data.name (e.g. synthetic)."),
    augment: str = typer.Option(
        None, "--augment", help="Use this augmentation instead of data.augment (none, crop, flip, crop_flip, default)."
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
