"""Smoke test of the benchmark (stages.bench): a tiny run through the real CLI. No speed is asserted."""

from __future__ import annotations

import json
import math

import yaml
from typer.testing import CliRunner

from stages import bench

from .stage_utils import tiny_params

FIGURES = {  # every figure a CPU run reports (cuda_peak only on CUDA)
    "train_loader",
    "train_dataloader",
    "train_speedup",
    "eval_loader",
    "eval_dataloader",
    "eval_speedup",
    "curve_train",
    "curve_plain_ratio",
    "bn_recalibration",
    "peak_rss",
    "peak_rss_worker",
}


def test_bench_cli_reports_every_figure(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            tiny_params(
                data__name="fashion_mnist",
                data__synthetic={"n_train": 256, "n_test": 64, "num_classes": 3, "size": 16},
                model={"name": "convfc", "args": {"width": 4, "fc_width": 16}},
            )
        )
    )
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench.app,
        [
            "--params",
            str(params),
            "--dataset",
            "synthetic",
            "--device",
            "cpu",
            "--batches",
            "2",
            "--repeats",
            "2",
            "--workers",
            "2",
            "--bn-images",
            "100",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, f"bench failed:\n{result.output}\n{result.exception!r}"

    printed = result.output
    for text in (
        "machine:",
        "torch threads",
        "device cpu",
        "synthetic",
        "curve/plain time ratio",
        "BN recalibration, 100 images (convfc, batch_norm=True)",
        "peak resident memory",
    ):
        assert text in printed, f"{text!r} missing from the printed report:\n{printed}"

    report = json.loads(out.read_text())
    assert report["setup"]["dataset"] == "synthetic", "--dataset did not override data.name"
    assert report["setup"]["timed_batches"] == 2 and report["setup"]["repeats"] == 2
    figures = report["figures"]
    assert set(figures) == FIGURES, f"figures differ: extra {set(figures) - FIGURES}, missing {FIGURES - set(figures)}"
    for key, figure in figures.items():
        for value in (figure["value"], *figure["runs"]):
            assert math.isfinite(value) and value > 0, f"figure {key} is not a positive finite number: {figure}"
    for key in ("train_loader", "train_dataloader", "curve_train", "eval_loader", "bn_recalibration"):
        assert len(figures[key]["runs"]) == 2, f"{key}: expected one run per repeat, got {figures[key]['runs']}"
