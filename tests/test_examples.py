"""examples/paper.py — the whole paper through library calls (docs/python.md) — gives the pipeline's numbers.

The script runs on the session's tiny workspace (``tiny_workspace``: the stages run once on the tiny config) with
that workspace's params and prepared data; every number it reports must equal what the stages wrote, bit for bit
(the same calls in the same order on the same machine). docs/python.md shows the script itself.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modeconn.data import load_prepared
from modeconn.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "paper.py"


def _script():
    spec = importlib.util.spec_from_file_location("paper_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(tiny_workspace):
    params = yaml.safe_load((tiny_workspace / "params.yaml").read_text())
    runtime = Runtime.resolve("cpu")  # what the stages ran with (--device cpu, the rest automatic)
    prepared = load_prepared(tiny_workspace / "data" / "prepared", runtime.device)
    return _script().paper(prepared, params, runtime)


def _metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / name).read_text())


def test_the_script_reproduces_the_endpoints_stage(result, tiny_workspace):
    for seed, error in result["endpoint_test_error"].items():
        assert error == _metrics(tiny_workspace, f"endpoints/seed_{seed}.json")["test_error"], f"seed {seed}"


def test_the_script_reproduces_the_curve_stages(result, tiny_workspace):
    staged = _metrics(tiny_workspace, "curve.json")
    for name in ("curve", "segment"):
        for measure in ("test_error", "train_loss", "test_nll"):
            assert result["curve"][name][measure] == staged[name][measure], f"{name} {measure}"
    assert result["curve"]["length"] == staged["length"]
    assert result["curve"]["ensemble"]["curve"] == staged["ensemble"]["curve"]


def test_the_script_reproduces_the_fge_stage(result, tiny_workspace):
    staged = _metrics(tiny_workspace, "fge.json")
    for key in ("ensemble_accuracy", "ensemble_nll", "snapshot_accuracy"):
        assert result["fge"][key] == staged[key], key


def test_the_script_reproduces_the_budget_comparison(result, tiny_workspace):
    staged = _metrics(tiny_workspace, "compare.json")
    budgets = [b for b in staged if b.endswith("B") and b[:-1].isdigit()]
    assert budgets, "compare.json has no budget tables"
    for b in budgets:
        for method, scores in staged[b].items():
            for key in ("accuracy", "nll", "ece", "members"):
                assert result["budgets"][b][method][key] == scores[key], f"{b} {method} {key}"


def test_the_script_runs_as_a_command(tiny_workspace):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "params.yaml", "data/prepared"],
        cwd=tiny_workspace,
        capture_output=True,
        text=True,
        timeout=600,
        env={"MODECONN_DEVICE": "cpu", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "worst test error along t" in out.stdout and "swa" in out.stdout


def test_docs_python_shows_the_script_itself():
    doc = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", doc, re.MULTILINE | re.DOTALL)
    assert SCRIPT.read_text() in blocks, "docs/python.md must show examples/paper.py as it is (copy it in again)"
