"""The width experiment (paper, Sec. 4, Fig. 3): its summary math against hand computations, its stages,
and its whole graph (experiments/width/dvc.yaml, commands expanded by hand) on a tiny synthetic config."""

from __future__ import annotations

import copy
import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from modeconn.data import read_info
from modeconn.models import create_model
from modeconn.report import links
from modeconn.width import COUNTS, Widths, layer_parameters, summarize, width_point
from stages import eval_curve, fit_curve, headline, prepare, train_endpoint, validate, width
from stages.kit.config import read_sections

from .stage_utils import ROOT, invoke, tiny_params

MODULES = {m.__name__: m for m in (validate, prepare, width, train_endpoint, fit_curve, eval_curve, headline)}
TRAINING = ("stages.train_endpoint", "stages.fit_curve", "stages.eval_curve")


def summaries(start: float, end: float, peak: float, nll_shift: float, ratio: float) -> dict:
    """A curve.json as eval_curve writes it, with only the keys the summary reads."""

    def s(a: float, b: float, m: float) -> dict:
        return {"start": a, "end": b, "max": m, "min": min(a, b)}

    return {
        "curve": {
            "train_loss": s(start, end, peak),
            "train_nll": s(start - nll_shift, end - nll_shift, peak - nll_shift - 0.01),
            "test_error": s(0.1, 0.12, 0.2),
        },
        "length": {"curve": 2.0 * ratio, "segment": 2.0, "ratio": ratio},
    }


def test_width_point_against_hand_computation():
    p = width_point(4, summaries(start=0.30, end=0.25, peak=0.95, nll_shift=0.1, ratio=1.5))
    assert p["k"] == 4
    assert p["train_loss_barrier"] == pytest.approx(0.95 - 0.30)  # the larger endpoint loss, not the mean
    assert p["train_nll_barrier"] == pytest.approx((0.95 - 0.11) - 0.20)
    assert p["test_error_barrier"] == pytest.approx(0.2 - 0.12)
    assert p["endpoint_train_loss"] == pytest.approx(0.30)
    assert p["length_ratio"] == 1.5 and p["curve_length"] == 3.0 and p["segment_length"] == 2.0
    # A curve never worse than its ends has barrier 0, not negative of the gap between the ends.
    flat = width_point(1, summaries(start=0.2, end=0.4, peak=0.4, nll_shift=0.0, ratio=1.0))
    assert flat["train_loss_barrier"] == 0.0


def test_widths_scale_the_named_arguments_only():
    fc = Widths("convfc", {"width": 2, "fc_width": 8, "batch_norm": True}, ("fc_width",))
    assert fc.args_at(3) == {"width": 2, "fc_width": 24, "batch_norm": True}
    assert fc.fixed == ("width",), "an integer argument K leaves; booleans are no widths"
    assert fc.describe() == "fc_width = K × 8; width = 2 at every K"
    both = Widths("convfc", {"width": 2, "fc_width": 8, "batch_norm": True}, ("width", "fc_width"))
    assert both.args_at(3) == {"width": 6, "fc_width": 24, "batch_norm": True} and both.fixed == ()
    assert both.describe() == "width, fc_width = K × (2, 8)"


def test_summarize_against_hand_computation():
    widths = Widths("convfc", {"width": 2, "fc_width": 8, "batch_norm": True}, ("fc_width",))
    given = {4: (0.25, 0.24, 0.40, 1.2), 1: (0.40, 0.35, 1.60, 1.9)}  # any order: rows come sorted by K
    summary = summarize(widths, {k: summaries(*v[:3], 0.05, v[3]) for k, v in given.items()}, 10, 1, 28)
    assert [r["k"] for r in summary.rows] == [1, 4]
    for r in summary.rows:
        a, b, peak, ratio = given[r["k"]]
        counts = dict(zip(COUNTS, convfc_counts(2, 8 * r["k"])))  # K scales the FC layers only
        assert r == {**width_point(r["k"], summaries(a, b, peak, 0.05, ratio)), "max_test_error": 0.2, **counts}
        assert summary.metrics[f"k{r['k']}"] == {k: v for k, v in r.items() if k not in ("k", *COUNTS)}
        assert summary.parameters[f"k{r['k']}"] == counts
    assert summary.metrics["change"] == pytest.approx({"train_loss_barrier": 0.15 - 1.2, "length_ratio": 1.2 - 1.9})
    conv, fc = convfc_counts(2, 32)
    assert f"| 4 | 2 | 32 | {conv:,} | {fc:,} | 0.1500 | 0.1400 | 0.2500 | 20.00% | 1.200 |" in summary.markdown
    assert summary.markdown.startswith("Width experiment (Sec. 4, Fig. 3): convfc with fc_width = K × 8; width = 2")


WIDTH = {"ks": [1, 2], "model": "convfc", "args": {"width": 2, "fc_width": 8, "batch_norm": True}}


def width_params(**width_overrides) -> dict:
    params = {k: v for k, v in tiny_params(train__save_epochs=[]).items() if k in ("data", "train", "curve", "eval")}
    params["width"] = {**copy.deepcopy(WIDTH), "scale": ["fc_width"], **width_overrides}
    params["subset"] = {"train_size": 160, "test_size": 64, "seed": 0}
    return params


def write(path: Path, params: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_meta(folder: Path, num_classes: int = 10, channels: int = 1, size: int = 28) -> Path:
    """A prepared folder's meta.json (all the summary reads of it: the shapes its networks are built for)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": "fashion_mnist", "num_classes": num_classes, "channels": channels, "size": size}
    (folder / "meta.json").write_text(json.dumps({**meta, "mean": [0.3], "std": [0.35], "augment": "none"}))
    return folder


def convfc_counts(width: int, fc_width: int, num_classes: int = 10, channels: int = 1, size: int = 28) -> tuple:
    """ConvFC's conv and FC parameter counts by hand: 5x5 convs c → w → 2w → 4w, then three pools of 3 with
    stride 2 (28 → 13 → 6 → 2), then Linear layers 4w·s² → f → f → classes (weights and biases)."""
    c = [channels, width, 2 * width, 4 * width]
    conv = sum(25 * a * b + b for a, b in zip(c[:-1], c[1:]))
    s = size
    for _ in range(3):
        s = (s - 3) // 2 + 1
    f = [4 * width * s * s, fc_width, fc_width, num_classes]
    return conv, sum(a * b + b for a, b in zip(f[:-1], f[1:]))


@pytest.mark.parametrize(
    "scale, row",
    [
        (["fc_width"], "| 4 | 2 | 32 | {conv:,} | {fc:,} | 0.1500 |"),  # K, width 2, fc_width 8K, counts, barrier
        (["width", "fc_width"], "| 4 | 8 | 32 | {conv:,} | {fc:,} | 0.1500 |"),  # width 2K too
    ],
)
def test_summary_stage_against_hand_computation(tmp_path, scale, row):
    params = write(tmp_path / "params.yaml", width_params(ks=[1, 2, 4], scale=scale))
    prepared = write_meta(tmp_path / "subset")
    runs = tmp_path / "runs"
    given = {1: (0.40, 0.35, 1.60, 1.9), 2: (0.30, 0.32, 0.80, 1.5), 4: (0.25, 0.24, 0.40, 1.2)}
    for k, (a, b, peak, ratio) in given.items():
        (runs / f"k{k}").mkdir(parents=True)
        (runs / f"k{k}" / "curve.json").write_text(json.dumps(summaries(a, b, peak, 0.05, ratio)))
    out = tmp_path / "metrics"
    r = invoke(
        width,
        "summary",
        "--params", params,
        "--prepared", prepared,
        "--runs", runs,
        "--metrics", out / "width.json",
        "--table", out / "width.csv",
        "--figure", out / "width.png",
        "--markdown", out / "width.md",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads((out / "width.json").read_text())
    for k, (a, b, peak, ratio) in given.items():
        assert result[f"k{k}"]["train_loss_barrier"] == pytest.approx(peak - max(a, b)), k
        assert result[f"k{k}"]["length_ratio"] == pytest.approx(ratio), k
    assert result["change"]["train_loss_barrier"] == pytest.approx((0.40 - 0.25) - (1.60 - 0.40))
    assert result["change"]["length_ratio"] == pytest.approx(1.2 - 1.9)

    def scalars(obj):
        return all(scalars(v) for v in obj.values()) if isinstance(obj, dict) else isinstance(obj, (int, float))

    assert scalars(result), "width.json must hold scalar leaves only"
    rows = list(csv.DictReader((out / "width.csv").open()))
    assert [int(r["k"]) for r in rows] == [1, 2, 4]
    assert float(rows[1]["train_loss_barrier"]) == pytest.approx(0.80 - 0.32)
    width_at_4 = 8 if "width" in scale else 2
    conv, fc = convfc_counts(width_at_4, 32)
    md = (out / "width.md").read_text()
    assert row.format(conv=conv, fc=fc) in md, md
    assert "| K | width | fc_width | conv params | FC params |" in md, "every integer argument has a column"
    said = "width, fc_width = K × (2, 8)." if "width" in scale else "fc_width = K × 8; width = 2 at every K."
    assert f"convfc with {said}" in md, md
    assert int(rows[2]["conv_params"]) == conv and int(rows[2]["fc_params"]) == fc
    assert (out / "width.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "width.run.json").read_text())
    assert run["model"] == "convfc" and list(run["scale"].values()) == scale  # lists are written as mappings
    assert run["parameters"]["k4"] == {"conv_params": conv, "fc_params": fc}
    assert "conv_params" not in result["k4"], "parameter counts describe the runs; they are not metrics"


def test_summary_names_the_missing_run(tmp_path):
    params = write(tmp_path / "params.yaml", width_params())
    out = tmp_path / "metrics"
    r = invoke(
        width, "summary", "--params", params, "--prepared", write_meta(tmp_path / "subset"),
        "--runs", tmp_path / "runs", "--metrics", out / "w.json",
        "--table", out / "w.csv", "--figure", out / "w.png", "--markdown", out / "w.md",
    )  # fmt: skip
    assert r.exit_code == 1
    assert "k1/curve.json not found" in r.output and "eval_curve@1" in r.output
    assert not out.exists(), "nothing half-written"


@pytest.mark.parametrize("scale, width_at_3", [(["fc_width"], 2), (["width", "fc_width"], 6)])
def test_configure_scales_the_named_args_and_copies_train(tmp_path, scale, width_at_3):
    params = write(tmp_path / "params.yaml", width_params(ks=[1, 3], scale=scale))
    r = invoke(width, "configure", "--k", 3, "--params", params, "--out", tmp_path / "k3.yaml")
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load((tmp_path / "k3.yaml").read_text())
    assert doc["model"] == {"name": "convfc", "args": {"width": width_at_3, "fc_width": 24, "batch_norm": True}}
    assert doc["train"] == width_params()["train"]
    bad = invoke(width, "configure", "--k", 5, "--params", params, "--out", tmp_path / "k5.yaml")
    assert bad.exit_code == 1 and "--k 5 is not one of width.ks [1, 3]" in bad.output
    assert not (tmp_path / "k5.yaml").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"ks": [2]}, "width.ks must list at least two"),
        ({"scale": ["depth"]}, "width.scale names 'depth'"),
        ({"model": "nope"}, "width.model 'nope'"),
        ({"extra": 1}, "unknown key width.extra"),
    ],
)
def test_width_section_errors_name_the_key(tmp_path, override, message):
    params = write(tmp_path / "params.yaml", width_params(**override))
    r = invoke(width, "configure", "--k", 1, "--params", params, "--out", tmp_path / "k1.yaml")
    assert r.exit_code == 1 and message in r.output, r.output


def test_subset_draws_train_and_test_and_keeps_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write(tmp_path / "params.yaml", width_params())
    assert invoke(prepare, "--params", params, "--out", "full").exit_code == 0
    r = invoke(width, "subset", "--params", params, "--prepared", "full", "--out", "sub")
    assert r.exit_code == 0, r.output
    full, sub = torch.load("full/data.pt"), torch.load("sub/data.pt")
    assert sub["train_y"].numel() == 160 and sub["test_y"].numel() == 64
    assert torch.equal(sub["val_x"], full["val_x"]) and torch.equal(sub["val_y"], full["val_y"])
    # Each kept image is the full split's image of the same index (rows of the full split, in order).
    rows = {bytes(x.flatten().tolist()): i for i, x in enumerate(full["train_x"])}
    idx = [rows[bytes(x.flatten().tolist())] for x in sub["train_x"]]
    assert idx == sorted(idx) and all(torch.equal(full["train_y"][i], y) for i, y in zip(idx, sub["train_y"]))
    info = read_info(Path("sub"))
    assert info.mean == read_info(Path("full")).mean, "normalisation stays that of the prepared training split"
    meta = json.loads(Path("sub/meta.json").read_text())
    assert (meta["n_train"], meta["n_test"], meta["n_val"]) == (160, 64, 48)
    too_big = write(tmp_path / "big.yaml", {**width_params(), "subset": {"train_size": 10_000, "test_size": 0}})
    r = invoke(width, "subset", "--params", too_big, "--prepared", "full", "--out", "big")
    assert r.exit_code == 1 and "subset.train_size = 10000 exceeds" in r.output and not Path("big").exists()


def expand(dvc: dict, params: dict) -> list[tuple[str, str]]:
    """(stage name, command) of experiments/width/dvc.yaml in file order, foreach/matrix expanded as DVC does."""

    def lookup(expr: str, item) -> str:
        if expr == "item":
            return str(item)
        if expr.startswith("item."):
            return str(item[expr[5:]])
        section, key = expr.split(".")
        return params[section][key]

    def fill(text: str, item=None) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: lookup(m.group(1), item), text)

    def values(ref: str):
        section, key = re.fullmatch(r"\$\{(\w+)\.(\w+)\}", ref).groups()
        return params[section][key]

    out = []
    for name, st in dvc["stages"].items():
        if "foreach" in st:
            out += [(f"{name}@{k}", fill(st["do"]["cmd"], k)) for k in values(st["foreach"])]
        elif "matrix" in st:
            (a, ra), (b, rb) = st["matrix"].items()
            out += [(f"{name}@{x}-{y}", fill(st["cmd"], {a: x, b: y})) for x in values(ra) for y in values(rb)]
        else:
            out.append((name, fill(st["cmd"])))
    return out


def test_whole_width_graph_on_a_tiny_config(tmp_path, monkeypatch):
    """Every command of experiments/width/dvc.yaml on tiny synthetic data, then the summary against the
    per-K evaluation tables: barrier = max_t train loss on the curve − max(train loss at t = 0, t = 1)."""
    dvc = yaml.safe_load((ROOT / "experiments" / "width" / "dvc.yaml").read_text())
    assert all(st.get("wdir", st.get("do", {}).get("wdir")) == "../.." for st in dvc["stages"].values())
    params = width_params()
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "experiments" / "width" / "params.yaml", params)
    steps = expand(dvc, params)
    assert [n for n, _ in steps][-2:] == ["summary", "headline"] and len(steps) == 1 + 1 + 1 + 2 + 4 + 2 + 2 + 1 + 1
    for name, cmd in steps:
        python, dash_m, module, *args = shlex.split(cmd)
        assert (python, dash_m) == ("python", "-m"), cmd
        device = ["--device", "cpu"] if module in TRAINING else []
        r = invoke(MODULES[module], *args, *device)
        assert r.exit_code == 0, f"{name}: {r.output}"
    ws = tmp_path / "experiments" / "width"
    for k in (1, 2):
        spec = json.loads((ws / "runs" / f"k{k}" / "endpoints" / "seed_0.run.json").read_text())["model_args"]
        assert (spec["width"], spec["fc_width"]) == (2, 8 * k), "configure's widths reached the endpoints"
    result = json.loads((ws / "metrics" / "width.json").read_text())
    for k in (1, 2):
        rows = [r for r in csv.DictReader((ws / "runs" / f"k{k}" / "curve_eval.csv").open()) if r["path"] == "curve"]
        losses = [float(r["train_loss"]) for r in rows]
        assert float(rows[0]["t"]) == 0.0 and float(rows[-1]["t"]) == 1.0
        assert result[f"k{k}"]["train_loss_barrier"] == pytest.approx(max(losses) - max(losses[0], losses[-1]))
        cur = json.loads((ws / "runs" / f"k{k}" / "curve.json").read_text())
        assert result[f"k{k}"]["length_ratio"] == pytest.approx(cur["length"]["curve"] / cur["length"]["segment"])
    assert (ws / "metrics" / "width.png").is_file() and (ws / "metrics" / "width.md").is_file()


def test_the_committed_default_scales_the_fully_connected_layers_only():
    """Fig. 3 of the paper varies the sizes of the fully connected layers by K: at every K of
    experiments/width/params.yaml the conv layers are those of K = 1 and the FC layers grow with K.
    Scaling the convolutions too is an option (``scale: [width, fc_width]``), not the default."""
    (cfg,) = read_sections(ROOT / "experiments" / "width" / "params.yaml", "width")
    assert cfg.scale == ("fc_width",), f"width.scale is {list(cfg.scale)}; the paper's Fig. 3 is [fc_width]"
    assert cfg.model == "convfc", "the paper's 3-conv + 3-FC network"
    widths = Widths(cfg.model, cfg.args, cfg.scale)
    nets = {k: create_model(cfg.model, 10, 1, 28, **widths.args_at(k)) for k in sorted(cfg.ks)}
    base = nets[min(cfg.ks)]
    for k, net in nets.items():
        convs = [(n, p.shape) for n, p in net.named_parameters() if n.startswith("conv_part")]
        assert convs == [(n, p.shape) for n, p in base.named_parameters() if n.startswith("conv_part")], k
    counts = [layer_parameters(net) for net in nets.values()]
    assert len({c["conv_params"] for c in counts}) == 1, counts
    fc = [c["fc_params"] for c in counts]
    assert fc == sorted(set(fc)), f"FC parameters must grow with K: {fc}"
    assert counts[0] == dict(zip(("conv_params", "fc_params"), convfc_counts(**widths.args_at(min(cfg.ks)))))


def test_report_embeds_the_width_summary_when_present(tmp_path):
    """The report stage embeds the width experiment's table and figure where both are there (the committed
    run's metrics stand in for a run of the main pipeline)."""
    from stages import report

    metrics, folder = tmp_path / "metrics", tmp_path / "experiments" / "width" / "metrics"
    shutil.copytree(ROOT / "metrics", metrics)
    seeds = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["seeds"]

    def width_part(width: Path | None) -> str:
        text, _ = report.build(metrics, metrics / "report.md", seeds, width)
        start = text.find("## Width of the network (Sec. 4, Fig. 3)")
        return "" if start < 0 else text[start : text.index("## Sources")]

    assert width_part(None) == "" and width_part(folder) == ""
    folder.mkdir(parents=True)
    (folder / "width.md").write_text("| K | barrier |\n|---|---|\n| 1 | 0.5 |\n")
    assert width_part(folder) == "", "both width.md and width.png are needed"
    (folder / "width.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    text = width_part(folder)
    assert "own pipeline" in text and "| 1 | 0.5 |" in text
    assert "](../experiments/width/metrics/width.png)" in text
    for target in links(text):
        assert (metrics / target).is_file(), target
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["cmd"]
    assert "--width experiments/width/metrics" in cmd, "the main pipeline's report embeds the width experiment"


def test_width_stages_list_the_code_and_params_of_the_root_stages_they_reuse():
    """Each reused stage reads the code the root's same stage reads, and the params sections it reads from the
    width params file (train_endpoint: none, it reads its width's config file, which is a dependency)."""
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    own = yaml.safe_load((ROOT / "experiments" / "width" / "dvc.yaml").read_text())["stages"]
    code = ("stages/", "modeconn/")
    for name in ("prepare", "train_endpoint", "fit_curve", "eval_curve"):
        r, w = root[name], own[name]
        r, w = r.get("do", r), w.get("do", w)
        assert sorted(d for d in w["deps"] if d.startswith(code)) == sorted(
            d for d in r["deps"] if d.startswith(code)
        ), name
        if name == "train_endpoint":
            assert "params" not in w and "experiments/width/configs/k${item.k}.yaml" in w["deps"]
        else:
            assert w["params"] == [{"experiments/width/params.yaml": r["params"]}], name
