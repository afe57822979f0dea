"""The instability analysis (Frankle et al. 2020): the parent stopped at step k inside an epoch, its children, the
summary against k by hand; the stages through the CLI on a tiny synthetic workspace, bad input, the GPU settings
forced on CPU."""

from __future__ import annotations

import copy
import io
import json

import pandas as pd
import pytest
import torch

from modeconn import instability as inst
from modeconn.data import DatasetInfo, Loader, eval_batches, make_synthetic
from modeconn.data.prepared import Prepared
from modeconn.errors import ConfigError
from modeconn.models import create_model
from modeconn.runtime import CPU, Runtime
from stages import instability as stage
from stages import prepare, validate

from .stage_utils import invoke, tiny_params, write_params

SCHEDULE = inst.Schedule(epochs=2, lr=0.05, momentum=0.9, wd=5e-4)
INFO = DatasetInfo("synthetic", 4, 1, 28, (0.5,), (0.25,), "crop_flip")


@pytest.fixture(scope="module")
def task():
    """Synthetic images: 5 batches of 32 per epoch (T = 10), a ConvFC with BN, the measuring passes."""
    train, test = make_synthetic(n_train=160, n_test=64, num_classes=4, size=28, seed=0)
    batches = Loader(train, INFO, 32, train=True, seed=0, drop_last=True)
    data = Prepared(train=train, test=test, val=None, info=INFO)
    evals = eval_batches(data, 64)
    return batches, evals


def model_fn() -> torch.nn.Module:
    return create_model("convfc", 4, 1, 28, width=4, fc_width=16, batch_norm=True)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fresh(batches, seed: int = 0, runtime: Runtime = CPU):
    torch.manual_seed(seed)
    loader = copy.copy(batches)
    loader.generator = torch.Generator().manual_seed(seed)
    return inst.start(runtime.prepare(model_fn()), loader, SCHEDULE, runtime)


@pytest.mark.parametrize("k", [0, 3, 5, 7])  # 3 and 7 inside an epoch, 5 at its end
def test_a_run_stopped_at_step_k_and_resumed_ends_bit_for_bit_where_the_uninterrupted_run_ends(task, k):
    batches, _ = task
    total = SCHEDULE.total(batches)
    whole = inst.train_to(fresh(batches), total + 1)
    parent = inst.train_to(fresh(batches), k + 1)
    assert parent.iteration == k + 1
    buffer = io.BytesIO()
    torch.save(parent.state_dict(), buffer)  # the whole state at step k, through a file
    buffer.seek(0)
    resumed = fresh(batches, seed=99)  # other weights and data order: all of it comes from the state
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    inst.train_to(resumed, total + 1)
    assert resumed.iteration == whole.iteration == total + 1
    assert same(resumed.module, whole.module), f"resumed at k = {k}: weights differ from the uninterrupted run"
    # the parent's own order, continued by spawn(seed=None), is that run too
    assert same(inst.train_to(inst.spawn(parent, SCHEDULE, None), total + 1).module, whole.module)


def test_children_start_from_the_parents_weights_and_momentum_at_step_k_and_share_nothing(task):
    batches, _ = task
    parent = inst.train_to(fresh(batches), 4)  # k = 3, inside the first epoch
    kids = [inst.spawn(parent, SCHEDULE, s) for s in (1, 2)]
    for kid in kids:
        assert kid.iteration == parent.iteration == 4
        assert same(kid.module, parent.module)
        for p_kid, p_par in zip(kid.module.parameters(), parent.module.parameters()):
            m_kid, m_par = (
                kid.optimizer.state[p_kid]["momentum_buffer"],
                parent.optimizer.state[p_par]["momentum_buffer"],
            )
            assert torch.equal(m_kid, m_par) and m_kid.data_ptr() != m_par.data_ptr() and p_kid is not p_par
    before = {k: v.clone() for k, v in parent.module.state_dict().items()}
    for kid in kids:
        inst.train_to(kid, SCHEDULE.total(batches) + 1)
    assert all(torch.equal(before[k], v) for k, v in parent.module.state_dict().items()), "a child moved the parent"
    assert not same(kids[0].module, kids[1].module), "children of other data orders ended equal"


def test_children_of_k_0_differ_and_children_of_k_t_are_one_network(task):
    batches, evals = task
    total = SCHEDULE.total(batches)
    at_0 = inst.children_at(model_fn, batches, evals, 0, 0, SCHEDULE, num_points=3)
    assert not same(*at_0.children) and at_0.distance > 0
    row = at_0.row(len(batches))
    assert set(row) == set(inst.COLUMNS) and row["test_barrier"] >= 0.5 * abs(row["test_error_1"] - row["test_error_2"])
    assert list(at_0.path["t"]) == [0.0, 0.5, 1.0]
    table = inst.instability(model_fn, batches, evals, [total], [0], SCHEDULE, num_points=3)
    assert list(table.columns) == list(inst.COLUMNS) and len(table) == 1
    assert table["distance"].iloc[0] == 0 and table["test_barrier"].iloc[0] == 0 and table["stable"].iloc[0]
    assert table["epoch"].iloc[0] == SCHEDULE.epochs
    with pytest.raises(ConfigError, match="outside 0"):
        inst.children_at(model_fn, batches, evals, total + 1, 0, SCHEDULE)


def test_summary_mean_std_and_the_first_stable_k_by_hand():
    rows = [
        (0, 0, 0.10, 0.12, 0.08), (0, 1, 0.10, 0.10, 0.04),
        (4, 0, 0.10, 0.10, 0.01), (4, 1, 0.10, 0.10, 0.04),
        (8, 0, 0.10, 0.10, 0.01), (8, 1, 0.10, 0.10, 0.02),
    ]  # fmt: skip
    table = pd.DataFrame(
        [
            dict(
                k=k,
                epoch=k / 4,
                seed=s,
                test_error_1=a,
                test_error_2=b,
                test_barrier=e,
                train_barrier=e / 2,
                distance=1.0,
                stable=e < 0.02,
            )
            for k, s, a, b, e in rows
        ],  # fmt: skip
        columns=list(inst.COLUMNS),
    )
    summary = inst.summarize(table)
    assert list(summary["k"]) == [0, 4, 8] and list(summary["seeds"]) == [2, 2, 2]
    assert summary["test_barrier_mean"].tolist() == pytest.approx([0.06, 0.025, 0.015])
    assert summary["test_barrier_std"].iloc[0] == pytest.approx(0.04 / 2**0.5)  # ddof 1
    assert summary["test_error_mean"].iloc[0] == pytest.approx(0.105)
    assert inst.stable_from(table) == 8 and inst.stable_from(table, threshold=0.03) == 4
    assert inst.stable_from(table, threshold=0.01) is None
    assert "No k of this grid is stable" in inst.verdict(inst.summarize(table), None)
    assert "Stable from k = 8" in inst.verdict(summary, 8)
    head = inst.headline(summary, 8)
    assert head == {"stable_from_k": 8, "test_barrier_first_k": pytest.approx(0.06), "test_barrier_last_k": 0.015}
    assert inst.markdown(summary).count("\n") == 5  # header, rule, 3 rows


def test_the_gpu_settings_forced_on_cpu(task):
    batches, _ = task
    runtime = Runtime.resolve("cpu", "bf16", True)
    train, test = make_synthetic(n_train=160, n_test=64, num_classes=4, size=28, seed=0)
    loader = Loader(train, INFO, 32, train=True, seed=0, drop_last=True, channels_last=True)
    evals = eval_batches(Prepared(train=train, test=test, val=None, info=INFO), 64, channels_last=True)
    pair = inst.children_at(model_fn, loader, evals, 3, 0, SCHEDULE, num_points=3, runtime=runtime)
    conv = next(m for m in pair.children[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    row = pair.row(len(loader))
    assert all(pd.notna(row[c]) for c in inst.COLUMNS) and 0 <= row["test_error_1"] <= 1


INSTABILITY = {
    "ks": [0, 2],
    "seeds": [0, 1],
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "wd": 0.0005,
    "num_points": 3,
    "eval_batch_size": 64,
    "bn_samples": 96,
    "train_samples": 96,
}


def one_line_error(result) -> str:
    """The error a command printed (one message, no traceback; rich may wrap it), after a non-zero exit."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    return " ".join(result.output.split())


def test_the_stages_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, {**tiny_params(), "instability": INSTABILITY})
    r = invoke(validate, "--params", params, "--batch-sizes", "instability")
    assert r.exit_code == 0, r.output
    assert invoke(prepare, "--params", params, "--out", "data/prepared").exit_code == 0
    for k in INSTABILITY["ks"]:
        for s in INSTABILITY["seeds"]:
            out = ["--metrics", f"runs/k{k}/seed_{s}.json", "--table", f"runs/k{k}/seed_{s}.csv"]
            r = invoke(stage, "pair", "--k", k, "--seed", s, "--params", params, "--prepared", "data/prepared", *out,
                       "--device", "cpu")  # fmt: skip
            assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "runs/k2/seed_1.json").read_text())
    assert row["k"] == 2 and row["seed"] == 1 and isinstance(row["stable"], bool)
    assert len(pd.read_csv(tmp_path / "runs/k2/seed_1.csv")) == 3
    out = ["--table", "m/i.csv", "--markdown", "m/i.md", "--figure", "m/i.png", "--headline", "m/headline.json"]
    r = invoke(stage, "summary", "--params", params, "--runs", "runs", *out)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "m/i.csv")) == 4 and (tmp_path / "m/i.png").stat().st_size > 0
    head = json.loads((tmp_path / "m/headline.json").read_text())["instability"]
    assert set(head) == {"stable_from_k", "test_barrier_first_k", "test_barrier_last_k"}
    assert "| 2 |" in (tmp_path / "m/i.md").read_text()

    # bad input: one line, exit non-zero
    bad = ["--metrics", "x.json", "--table", "x.csv", "--params", params, "--prepared", "data/prepared"]
    assert "not in instability.ks" in one_line_error(invoke(stage, "pair", "--k", 3, "--seed", 0, *bad))
    (tmp_path / "runs/k0/seed_1.json").unlink()
    assert "pair@0-1" in one_line_error(invoke(stage, "summary", "--params", params, "--runs", "runs", *out))
    far = write_params(tmp_path / "runs", {**tiny_params(), "instability": {**INSTABILITY, "ks": [0, 999]}})
    r = invoke(stage, "pair", "--k", 999, "--seed", 0, *bad[:4], "--params", far, "--prepared", "data/prepared")
    assert "k = 999 is outside" in one_line_error(r)
    wrong = write_params(tmp_path / "m", {**tiny_params(), "instability": {**INSTABILITY, "ks": [0, -1]}})
    assert "instability.ks" in one_line_error(invoke(validate, "--params", wrong, "--out", "ok"))
    big = write_params(tmp_path / "m", {**tiny_params(), "instability": {**INSTABILITY, "batch_size": 500}})
    r = invoke(validate, "--params", big, "--out", "ok", "--batch-sizes", "instability")
    assert "instability.batch_size" in one_line_error(r)


def test_the_report_embeds_the_instability_summary_when_present(tmp_path, monkeypatch):
    """The root report's build passes this experiment's table and figure on where both are there, and its section
    shows them (the main run's own files stubbed out)."""
    from modeconn import report as library
    from stages import report

    seen = {}
    for name in ("report_sources", "simplex_sources"):  # the main run's own files: none
        if hasattr(report, name):
            monkeypatch.setattr(report, name, lambda *args, **kwargs: {})
    monkeypatch.setattr(report, "read_results", lambda *args, **kwargs: None)
    monkeypatch.setattr(report.report, "markdown", lambda *args, **embedded: seen.update(embedded) or "")
    monkeypatch.setattr(report.report, "headline", lambda results: {})
    folder = tmp_path / "experiments" / "instability" / "metrics"
    folder.mkdir(parents=True)
    (folder / "instability.md").write_text("| k (iterations) | barrier |\n|---|---|\n| 0 | 5.0 |\n")
    report.build(tmp_path / "metrics", tmp_path / "metrics" / "report.md", [0], None, None, folder)
    assert seen == {}, "both instability.md and instability.png are needed"
    (folder / "instability.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report.build(tmp_path / "metrics", tmp_path / "metrics" / "report.md", [0], None, None, folder)
    embedded = seen["instability"]
    assert embedded.figure == "../experiments/instability/metrics/instability.png"
    text = "\n".join(library.instability_section(embedded))
    assert text.startswith("## Instability") and "| 0 | 5.0 |" in text and f"]({embedded.figure})" in text
    assert library.instability_section(None) == []


def test_the_experiments_params_and_the_paper_scale_settings_of_the_docs_validate():
    import re

    import yaml

    from stages.kit.config import OTHER_SECTIONS, SECTIONS, read_sections, section

    from .stage_utils import ROOT

    cfg, model = read_sections(ROOT / "experiments/instability/params.yaml", "instability", "model")
    assert len(cfg.seeds) >= 2 and cfg.ks[0] == 0 and list(cfg.ks) == sorted(cfg.ks) and model.args["batch_norm"]
    doc = ROOT / "docs/instability.md"
    (block,) = re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)
    paper = yaml.safe_load(block)
    for name in ("data", "subset", "model", "instability"):
        section(paper, name, {**SECTIONS, **OTHER_SECTIONS}[name], doc)
    assert paper["instability"]["epochs"] * (50_000 // paper["instability"]["batch_size"]) == 62_790
