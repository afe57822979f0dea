"""Every dvc.yaml lists, as deps, every file of code its stage's command runs.

A stage whose deps miss a module it imports is not rerun when that module changes: `dvc repro` would keep
results of old code (and `dvc status` would call them up to date). The imports are read from the source
(ast), transitively over the project's packages, so a new import without a new dep fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeconn", "stages", "tools")
PIPELINES = (
    "dvc.yaml",
    "experiments/width/dvc.yaml",
    "experiments/instability/dvc.yaml",
    "experiments/bn/dvc.yaml",
    "own/dvc.template.yaml",  # copied to own/dvc.yaml
)


def module_file(name: str) -> Path | None:
    """The file of first-party module ``name`` (``modeconn.curves`` → modeconn/curves.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path) -> set[Path]:
    """The first-party files ``path`` imports directly (absolute, relative and ``from pkg import module``)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from modeconn import claims` too
        for name in names:
            file = module_file(name)
            if file is not None and file != path:
                found.add(file)
    return found


def closure(start: Path) -> set[Path]:
    """``start`` and every first-party file it imports, transitively."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported(path))
    return seen


def stages_of(pipeline: str):
    """(stage name, module run by its cmd, its deps as absolute paths) of every stage of ``pipeline``."""
    spec = yaml.safe_load((ROOT / pipeline).read_text())["stages"]
    for name, stage in spec.items():
        body = stage.get("do", stage)
        folder = (ROOT / pipeline).parent / body.get("wdir", stage.get("wdir", "."))
        for module in re.findall(r"python -m (stages\.\w+)", body["cmd"]):
            deps = {(folder / d).resolve() for d in body.get("deps", [])}
            yield name, module, deps


CASES = [(p, *s) for p in PIPELINES for s in stages_of(p)]


@pytest.mark.parametrize(("pipeline", "stage", "module", "deps"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_a_stage_depends_on_every_file_of_code_it_runs(pipeline, stage, module, deps):
    # The packages' __init__ files hold no code that a result depends on (a docstring and a version).
    code = {f for f in closure(module_file(module)) if f.name != "__init__.py" or f.parent.parent != ROOT}
    covered = lambda f: any(f == d or d in f.parents for d in deps)
    missing = sorted(str(f.relative_to(ROOT)) for f in code if not covered(f))
    assert not missing, f"{pipeline}: stage {stage} ({module}) runs {missing} but does not list them in deps"


def test_the_import_reader_follows_relative_and_package_imports():
    files = closure(module_file("stages.report"))
    assert ROOT / "stages/kit/cli.py" in files  # from .kit.cli import ...
    assert ROOT / "modeconn/claims.py" in files  # from modeconn import claims
    assert ROOT / "modeconn/errors.py" in files  # from modeconn.errors import ...


def test_each_layer_imports_only_the_layers_below_it():
    """The library imports neither stages nor tools; a stage imports the library and the stage kit, never another
    stage or a tool (tools may import all of them)."""
    wrong = []
    for path in sorted(ROOT.glob("modeconn/**/*.py")):
        wrong += [(path, f) for f in imported(path) if f.relative_to(ROOT).parts[0] != "modeconn"]
    for path in sorted(ROOT.glob("stages/**/*.py")):
        allowed = lambda f: f.relative_to(ROOT).parts[0] == "modeconn" or (ROOT / "stages/kit") in f.parents
        wrong += [(path, f) for f in imported(path) if not allowed(f) and f.name != "__init__.py"]
    assert not wrong, [f"{a.relative_to(ROOT)} imports {b.relative_to(ROOT)}" for a, b in wrong]
