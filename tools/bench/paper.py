"""The paper's network on CIFAR-shaped data: VGG16 training and curve training, and one evaluation point on
VGG16-BN (the figures of ``--paper-model``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modeconn.bn import recalibrate
from modeconn.curves import Curve
from modeconn.data import DatasetInfo, Loader, Prepared, channel_stats, eval_batches, make_synthetic
from modeconn.models import create_model
from modeconn.runtime import Runtime
from modeconn.train import predict

from .figures import Figure, paired_figure, rotated
from .probe import Sections
from .settings import BATCH, BN_BATCH, WARMUP, Settings
from .timing import curve_training, plain_training, point_speed

# The paper's network and optimiser (Garipov et al. 2018, CIFAR-10 VGG16: lr 0.05, curve lr 0.015, wd 5e-4).
PAPER_MODEL, PAPER_BN_MODEL = "vgg16", "vgg16_bn"
PAPER_CLASSES, PAPER_CHANNELS, PAPER_SIZE = 10, 3, 32
PAPER_LR, PAPER_CURVE_LR, PAPER_MOMENTUM, PAPER_WD = 0.05, 0.015, 0.9, 5e-4
PAPER_CURVE, PAPER_BENDS = "bezier", 3
PAPER_AUGMENT = "crop_flip"
PAPER_CPU_BATCHES = 2  # default --paper-batches on the CPU, where VGG16 takes seconds per batch


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
    plain = plain_training(
        model, PAPER_LR, PAPER_MOMENTUM, PAPER_WD, train_loader(), runtime, f"{PAPER_MODEL} training", warmup
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
