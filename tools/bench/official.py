"""modeconn against the paper's official code, the way that code trains and evaluates
(:mod:`tools.official_loops`), paired per round: training, curve training and one evaluation point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modeconn.curves import Curve
from modeconn.data import Prepared, Split, eval_batches
from modeconn.runtime import Runtime
from modeconn.train import make_sgd
from stages.kit.config import read_sections
from tools import official_loops

from .dataloader import LoaderSetting, data_loader
from .figures import Figure, paired_figure, rotated
from .probe import Sections
from .settings import BATCH, BN_BATCH, Settings
from .timing import Trainer, point_speed
from .workload import build, build_bn


def measure_official(
    settings: Settings,
    runtime: Runtime,
    section: Sections,
    status: Callable[[str], Any],
    data: Prepared,
    trainers: tuple[Trainer, Trainer],
    best: tuple[LoaderSetting, LoaderSetting],
) -> tuple[dict[str, Figure], dict[str, Any]]:
    """modeconn against the official code's loops (:mod:`tools.official_loops`), paired per round on the same model,
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
    official_plain = official_loops.OfficialTrainer(
        model,
        make_sgd(model.parameters(), train_cfg.lr, train_cfg.momentum, wd),
        official_loader(data.train, BATCH, True, best_train),
        device,
    )
    start, end = official_model(settings.seed + 1).state_dict(), official_model(settings.seed + 2).state_dict()
    curve_net = official_loops.CurveNet(official_model(settings.seed), start, end, kind, num_bends).to(device)
    official_curve = official_loops.OfficialTrainer(
        curve_net,
        make_sgd([p for p in curve_net.parameters() if p.requires_grad], curve_cfg.lr, curve_cfg.momentum, 0.0),
        official_loader(data.train, BATCH, True, best_train),
        device,
        regularizer=official_loops.curve_regularizer(curve_cfg.wd),
    )
    # The evaluation point, both ways, on the BN model between the same two random initialisations.
    bn_start = official_model(settings.seed + 1, bn=True).state_dict()
    bn_end = official_model(settings.seed + 2, bn=True).state_dict()
    bn_template, bn_name = build_bn(model_cfg, info)
    bn_curve = runtime.prepare(Curve(bn_template, bn_start, bn_end, kind, num_bends))
    section.probe.watch(bn_curve.template)
    official_net = official_loops.CurveNet(
        official_model(settings.seed, bn=True), bn_start, bn_end, kind, num_bends
    ).to(device)
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
        return official_loops.point_speed(official_net, 0.5, *official_point, curve_cfg.wd, device)[0]

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
        "reference": "tools/official_loops.py: the official utils.train, CurveNet, update_bn and utils.test re-written",
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
