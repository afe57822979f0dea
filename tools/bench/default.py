"""The figures of the default model and data (params.yaml's ``data``, ``model``, ``train`` and ``curve``):
training and evaluation on both data paths, curve training, BN recalibration, and the runtime's layout and
thread-count choices against the other choice."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modeconn.bn import recalibrate
from modeconn.curves import Curve
from modeconn.data import EVAL_BATCH, Loader
from modeconn.runtime import Runtime
from modeconn.train import predict
from stages.kit.config import read_sections

from .choices import layout_figures, one_thread
from .dataloader import LoaderSetting, OnDevice, best_setting, data_loader, loader_settings
from .figures import Figure, paired_figure, paired_label, rotated
from .host import release
from .official import measure_official
from .probe import Sections
from .settings import BATCH, BN_BATCH, WARMUP, Batches, Settings
from .timing import Trainer, bn_seconds, curve_training, eval_speed, interleaved_steps, plain_training
from .workload import build, build_bn, load_data


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
    plain = plain_training(plain_model, lr, momentum, wd, train_loader(), runtime, "plain training")
    settings_tried = loader_settings(settings.workers, runtime.device.type == "cuda")
    conventional: dict[LoaderSetting, Trainer] = {}
    eval_data_loaders: dict[LoaderSetting, OnDevice] = {}
    for setting in settings_tried:
        model = watch(fresh(settings.seed))
        batches = data_loader(data.train, info, BATCH, train=True, setting=setting, seed=settings.seed)
        conventional[setting] = plain_training(
            model, lr, momentum, wd, OnDevice(batches, runtime), runtime, f"training (DataLoader, {setting.name})"
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
    # the runtime's layout default (docs/speed.md). Not probed: it runs off the runtime on purpose.
    other = dataclasses.replace(runtime, channels_last=not channels_last)
    torch.manual_seed(settings.seed)
    other_model = other.prepare(build(model_cfg, info))
    other_batches = Loader(
        data.train, info, BATCH, train=True, seed=settings.seed, drop_last=True, channels_last=other.channels_last
    )
    other_plain = plain_training(
        other_model, lr, momentum, wd, other_batches, other, "plain training, other memory layout"
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
        peer_figures, peer_setup = measure_official(
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
