"""Smoke tests of the benchmark (tools.bench): tiny runs through the real CLI, and its small helpers.

No speed is asserted: only that every figure is there, finite and positive, and that the report
says what ran (runtime, DataLoader setting compared against, paired ratios).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from modeconn.errors import ConfigError
from modeconn.runtime import CPU, Runtime
from tools.bench.choices import layout_figures, one_thread
from tools.bench.cli import app
from tools.bench.dataloader import LoaderSetting, best_setting, loader_settings
from tools.bench.figures import paired_ratios, rotated
from tools.bench.probe import Probe, Sections
from tools.bench.settings import WARMUP, Settings
from tools.bench.timing import Trainer, interleaved_steps

from .stage_utils import tiny_params

PEER_FIGURES = {  # modeconn against the official code's loops (tools/official_loops.py); --no-peers leaves them out
    "peer_modeconn_train",
    "peer_modeconn_curve",
    "peer_train",
    "peer_train_speedup",
    "peer_curve_train",
    "peer_curve_speedup",
    "peer_curve_plain_ratio",
    "peer_modeconn_point",
    "peer_point",
    "peer_point_speedup",
}
FIGURES = {  # every figure a CPU run reports without the paper model (cuda_peak_* only on CUDA)
    "train_loader",
    "train_dataloader_w0",
    "train_dataloader_w2",
    "train_speedup",
    "eval_loader",
    "eval_dataloader_w0",
    "eval_dataloader_w2",
    "eval_speedup",
    "curve_train",
    "curve_plain_ratio",
    "curve_plain_step_ratio",
    "bn_recalibration",
    "layout_train",
    "layout_bn",
    "threads_train",
    "peak_rss",
    "peak_rss_worker",
    *PEER_FIGURES,
}
PAPER_FIGURES = {"paper_train", "paper_curve_train", "paper_curve_plain_ratio", "paper_point"}
# Sections where the network runs at φ_θ(t).
CURVE_SECTIONS = {"curve_train", "paper_curve_train", "paper_point", "peer_modeconn_curve", "peer_modeconn_point"}
PAIRED = {
    "train_speedup",
    "eval_speedup",
    "curve_plain_ratio",
    "curve_plain_step_ratio",
    "paper_curve_plain_ratio",
    "layout_train",
    "layout_bn",
    "threads_train",
    "peer_train_speedup",
    "peer_curve_speedup",
    "peer_curve_plain_ratio",
    "peer_point_speedup",
}
PER_ROUND = {  # figures with one run per round
    "train_loader",
    "train_dataloader_w0",
    "train_dataloader_w2",
    "eval_loader",
    "eval_dataloader_w0",
    "eval_dataloader_w2",
    "curve_train",
    "bn_recalibration",
    *PAIRED,
    *PAPER_FIGURES,
    *PEER_FIGURES,
}


def _invoke(tmp_path, *options: str, channels: int = 1) -> tuple[str, dict]:
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            tiny_params(
                data__name="fashion_mnist",
                data__synthetic={"n_train": 256, "n_test": 64, "num_classes": 3, "channels": channels, "size": 16},
                model={"name": "convfc", "args": {"width": 4, "fc_width": 16}},
            )
        )
    )
    out = tmp_path / "bench.json"
    args = ["--params", str(params), "--dataset", "synthetic", "--device", "cpu", "--batches", "2"]
    args += ["--bn-images", "100", *options, "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"bench failed:\n{result.output}\n{result.exception!r}"
    return result.output, json.loads(out.read_text())


def _check_figures(report: dict, expected: set[str], rounds: int) -> None:
    figures = report["figures"]
    assert set(figures) == expected, (
        f"figures differ: extra {set(figures) - expected}, missing {expected - set(figures)}"
    )
    for key, figure in figures.items():
        for value in (figure["value"], *figure["runs"]):
            assert math.isfinite(value) and value > 0, f"figure {key} is not a positive finite number: {figure}"
    for key in PER_ROUND & expected:
        assert len(figures[key]["runs"]) == rounds, f"{key}: expected one run per round, got {figures[key]['runs']}"
    for key in PAIRED & expected:
        assert figures[key]["paired"], f"{key} is not marked paired"
        assert f"paired, median [min–max] over {rounds} rounds" in figures[key]["label"], figures[key]["label"]


def _check_best(report: dict) -> None:
    """The JSON names the best DataLoader setting, and each speed-up is paired against exactly its runs."""
    figures, best = report["figures"], report["setup"]["dataloader_best"]
    tried = report["setup"]["dataloader_settings"]
    assert [s["workers"] for s in tried] == [0, 2], f"expected 0 and 2 workers tried on the CPU, got {tried}"
    for phase in ("train", "eval"):
        chosen = best[phase]
        assert chosen["figure"] in figures and chosen["setting"] in {s["setting"] for s in tried}, best
        assert chosen["setting"] in figures[f"{phase}_speedup"]["label"], figures[f"{phase}_speedup"]["label"]
        candidates = [f"{phase}_dataloader_w{s['workers']}" for s in tried]
        assert figures[chosen["figure"]]["value"] == max(figures[k]["value"] for k in candidates)
        loader, against = figures[f"{phase}_loader"]["runs"], figures[chosen["figure"]]["runs"]
        expected = [a / b for a, b in zip(loader, against)]
        assert figures[f"{phase}_speedup"]["runs"] == pytest.approx(expected), "the speed-up is not paired per round"
    plain, curve = figures["train_loader"]["runs"], figures["curve_train"]["runs"]
    assert figures["curve_plain_ratio"]["runs"] == pytest.approx([a / b for a, b in zip(plain, curve)])


def _check_peers(report: dict) -> None:
    """The official-style loops use the best DataLoader settings, and each speed-up is modeconn / official
    of the same round."""
    figures, setup, best = report["figures"], report["setup"]["peers"], report["setup"]["dataloader_best"]
    assert setup["train_loader"]["setting"] == best["train"]["setting"], setup
    assert setup["eval_loader"]["setting"] == best["eval"]["setting"], setup
    assert best["train"]["setting"] in figures["peer_train"]["label"]
    assert "NCHW" in figures["peer_train"]["label"]
    for speedup, ours, theirs in (
        ("peer_train_speedup", "peer_modeconn_train", "peer_train"),
        ("peer_curve_speedup", "peer_modeconn_curve", "peer_curve_train"),
        ("peer_point_speedup", "peer_modeconn_point", "peer_point"),
    ):
        expected = [a / b for a, b in zip(figures[ours]["runs"], figures[theirs]["runs"])]
        assert figures[speedup]["runs"] == pytest.approx(expected), f"{speedup} is not paired per round"
    plain, curve = figures["peer_train"]["runs"], figures["peer_curve_train"]["runs"]
    assert figures["peer_curve_plain_ratio"]["runs"] == pytest.approx([a / b for a, b in zip(plain, curve)])


def test_bench_cli_reports_every_figure(tmp_path):
    printed, report = _invoke(tmp_path, "--repeats", "2", "--workers", "2")
    for text in (
        "machine:",
        "torch threads",
        "device cpu",
        "runtime: device cpu",
        "precision fp32",
        "memory format channels_last",  # the CPU default too (measured faster: docs/speed.md)
        "synthetic",
        "best (highest median images/s) for training:",
        "Loader / best DataLoader",
        "curve/plain time per image, paired, median [min–max] over 2 rounds",
        "BN recalibration, 100 images (convfc, batch_norm=True)",
        "paper:   VGG16 figures off",
        "peak resident memory",
    ):
        assert text in printed, f"{text!r} missing from the printed report:\n{printed}"

    assert report["setup"]["dataset"] == "synthetic", "--dataset did not override data.name"
    assert report["setup"]["timed_batches"] == 2 and report["setup"]["repeats"] == 2
    assert report["setup"]["paper"] is None, "the paper model is off by default on the CPU"
    assert report["setup"]["runtime"]["precision"] == "fp32" and report["setup"]["runtime"]["channels_last"]
    assert report["setup"]["runtime_mismatches"] == []
    _check_figures(report, FIGURES, rounds=2)
    _check_best(report)
    _check_peers(report)


@pytest.mark.slow  # VGG16 under bf16 autocast on the CPU: 20 to 30 s
def test_bench_gpu_settings_on_cpu_with_the_paper_model(tmp_path):
    """The GPU code path (bf16 autocast, channels_last) forced on the CPU, with the VGG16 figures."""
    printed, report = _invoke(
        tmp_path,
        "--repeats",
        "2",
        "--precision",
        "bf16",
        "--channels-last",
        "1",
        "--paper-model",
        "--paper-batches",
        "1",
        channels=3,  # three channels: NCHW and channels_last differ, so the probe can tell them apart
    )
    for text in (
        "runtime: device cpu",
        "precision bf16",
        "memory format channels_last",
        "paper:   vgg16 (",
        "evaluation point at t=0.5 on vgg16_bn",
        "paper model vgg16, 3x32x32: training",
        "paper model vgg16: curve/plain time per image, paired, median [min–max] over 2 rounds",
    ):
        assert text in printed, f"{text!r} missing from the printed report:\n{printed}"

    setup = report["setup"]
    assert setup["runtime"]["precision"] == "bf16" and setup["runtime"]["channels_last"] is True
    official = PEER_FIGURES - PAIRED - {"peer_modeconn_train", "peer_modeconn_curve", "peer_modeconn_point"}
    sections = {k for k in FIGURES | PAPER_FIGURES if not k.startswith("peak_rss") and k not in PAIRED | official}
    assert set(setup["runtime_observed"]) == sections, "a section ran no watched forward pass"
    for section, seen in setup["runtime_observed"].items():
        # What the bench controls: the device, the input layout and autocast, in every section.
        assert seen["device"] == "cpu" and seen["memory_format"] == "channels_last", (section, seen)
        assert seen["output_dtype"] == "bfloat16", (section, seen)
        # The networks it prepares itself have channels_last conv weights; a curve's weights are φ_θ(t),
        # laid out by modeconn.curves, which the bench only reports (a warning when they differ).
        if section not in CURVE_SECTIONS:
            assert seen["weight_memory_format"] == "channels_last", (section, seen)
    for line in setup["runtime_mismatches"]:
        assert line.split(":")[0] in CURVE_SECTIONS and "weight_memory_format" in line, line
        assert f"warning: not every section ran under the runtime: {line}" in printed or line in printed
    if not setup["runtime_mismatches"]:
        assert "checked in every section: inputs channels_last, conv weights channels_last, outputs bfloat16" in printed
    paper = setup["paper"]
    assert paper["model"] == "vgg16" and paper["bn_model"] == "vgg16_bn" and paper["timed_batches"] == 1
    assert paper["point"]["bn_images"] > 0 and paper["point"]["test_images"] > 0
    _check_figures(report, FIGURES | PAPER_FIGURES, rounds=2)
    _check_best(report)


def test_bench_without_the_official_style_reference(tmp_path):
    printed, report = _invoke(tmp_path, "--repeats", "1", "--no-peers")
    _check_figures(report, FIGURES - PEER_FIGURES, rounds=1)
    assert report["setup"]["peers"] is None and "official-style" not in printed


def test_loader_settings_and_best():
    assert [s.key for s in loader_settings(2, cuda=False)] == ["w0", "w2"]
    assert [s.key for s in loader_settings(4, cuda=True)] == ["w0", "w0_pin", "w2", "w2_pin", "w4", "w4_pin"]
    w0, w2 = LoaderSetting(0), LoaderSetting(2)
    assert best_setting({w0: [3.0, 1.0, 2.0], w2: [1.5, 1.5, 9.0]}) == w0  # by the median, not the maximum
    assert paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    assert rotated([1, 2, 3], 4) == [2, 3, 1]
    with pytest.raises(ConfigError):
        Settings(paper_batches=0)


def test_probe_catches_a_pass_outside_the_runtime():
    runtime = Runtime.resolve("cpu", "bf16", True)
    probe = Probe(runtime)
    model = probe.watch(runtime.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))))
    probe.expected_sections += ["inside", "outside", "weights", "never"]
    x = torch.zeros(2, 3, 4, 4)
    probe.section = "inside"
    with runtime.autocast():
        model(runtime.batch(x))
    probe.section = "outside"
    model(x)  # no autocast, NCHW
    probe.section = "weights"  # the right input, but the conv run at NCHW weights (as functional_call may)
    nchw = {k: v.contiguous() for k, v in model.named_parameters()}
    with runtime.autocast():
        torch.func.functional_call(model, nchw, (runtime.batch(x),))
    problems = probe.mismatches()
    assert [p.split(":")[0] for p in problems] == ["outside", "weights", "never"], problems
    assert "memory_format contiguous" in problems[0] and "output_dtype float32" in problems[0]
    assert problems[1] == "weights: weight_memory_format contiguous (expected channels_last)"
    assert problems[2] == "never: no forward pass seen"
    assert probe.seen["inside"]["weight_memory_format"] == "channels_last"


def test_cuda_peaks_are_reported_per_section():
    sections = Sections(Runtime(), Probe(Runtime()), lambda message: None)
    sections.peaks = {"train_loader": [10.0, 12.0], "paper_point": [30.0, 20.0]}
    sections.before = {"train_loader": 5.0, "paper_point": 8.0}
    figures = sections.memory_figures({"train_loader": "training, in-memory Loader"})
    assert figures["cuda_peak_train_loader"].runs == [10.0, 12.0]
    assert "training, in-memory Loader (5 MiB allocated before)" in figures["cuda_peak_train_loader"].label
    assert figures["cuda_peak"].runs == [30.0, 20.0]  # per round, the largest of the sections
    assert Sections(Runtime(), Probe(Runtime()), print).memory_figures({}) == {}


@pytest.mark.slow  # one process, then two under torchrun: about 20 s
def test_data_parallel_bench_reports_one_and_two_processes(tmp_path):
    from tools import bench_ddp

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(train__batch_size=16)))
    out = tmp_path / "ddp.json"
    result = CliRunner().invoke(
        bench_ddp.app,
        ["--params", str(params), "--dataset", "synthetic", "--batches", "3", "--device", "cpu", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["one"]["processes"] == 1 and figures["many"]["processes"] == 2
    assert figures["one"]["images_per_s"] > 0 and figures["many"]["images_per_s"] > 0
    assert "2 processes" in result.output and "images/s" in result.output


@pytest.mark.parametrize("channels_last", [False, True])
def test_layout_figures_compare_the_two_layouts_whichever_the_runtime_uses(channels_last):
    """The layout ratios are channels_last over contiguous whichever layout the runtime runs in."""
    nhwc = {"train": [200.0, 300.0], "bn": [1.0, 2.0]}  # images/s, seconds
    nchw = {"train": [100.0, 100.0], "bn": [4.0, 3.0]}
    own, other = (nhwc, nchw) if channels_last else (nchw, nhwc)
    runs = {
        "train_loader": own["train"],
        "bn_recalibration": own["bn"],
        "train_other_layout": other["train"],
        "bn_other_layout": other["bn"],
    }
    figures = layout_figures(runs, channels_last, 2)
    assert figures["layout_train"].runs == [2.0, 3.0] and figures["layout_train"].value == 2.5
    assert figures["layout_bn"].runs == [4.0, 1.5] and figures["layout_bn"].paired


def test_one_thread_runs_on_one_thread_and_restores_the_count():
    threads = torch.get_num_threads()
    assert one_thread(lambda: float(torch.get_num_threads())) == 1.0
    assert torch.get_num_threads() == threads
    with pytest.raises(ZeroDivisionError):
        one_thread(lambda: 1 / 0)
    assert torch.get_num_threads() == threads


def test_interleaved_steps_alternate_the_trainers_step_by_step():
    calls = []

    def trainer(name):
        model = torch.nn.Linear(3, 2)

        def loss_fn(x, y):
            calls.append(name)
            logits = model(x)
            return torch.nn.functional.cross_entropy(logits, y), logits

        batches = [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))] * 2
        return Trainer(loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), batches, CPU, model, name)

    a, b = trainer("a"), trainer("b")
    before = a.module.weight.detach().clone()
    medians = interleaved_steps([a, b], 5, CPU)
    assert len(medians) == 2 and all(m > 0 for m in medians)
    assert calls == ["a", "b"] * (WARMUP + 5), "the steps are not interleaved one by one"
    assert not torch.equal(a.module.weight, before), "the optimiser did not step"
