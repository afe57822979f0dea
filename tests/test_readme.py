"""Every ```python block of README.md and of docs/**/*.md runs (the house rule: a snippet no test runs is broken).

Each block runs on its own, in a fresh namespace, from a temporary folder. The names a snippet may assume
without defining them are the ones a reader has at hand and the README leaves to them; ``PREAMBLE`` defines
exactly these (nothing else, not even ``torch``: a snippet imports what it uses):

- ``MyNet``: the user's own network, a tiny ``nn.Module`` (conv, BN, linear head) for 3×4×4 images, 3 classes;
- ``net_a``, ``net_b``: two instances of it (two trained networks, in the README's words);
- ``x``, ``y``: a batch of 8 such images and their labels.

A snippet that needs anything more defines it itself.

The documents are checked for what they name, too: links to files that exist, `make` targets of the Makefile,
`python -m` modules of the project and `modeconn.…` names that resolve (a rename leaves no stale name), a README
of at most ``README_MAX_LINES`` lines, and no history (that is git log).
"""

from __future__ import annotations

import importlib
import re
import traceback
from pathlib import Path

import pytest
import yaml

from .stage_utils import ROOT

PREAMBLE = """
import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):  # (B, 3, 4, 4) -> (B, 3)
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


torch.manual_seed(0)
net_a, net_b = MyNet(), MyNet()
x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))
"""
PREAMBLE_NAMES = ("MyNet", "net_a", "net_b", "x", "y")

# A fenced block opened by ```python (possibly indented, as inside a list item) and closed by ``` at that indent.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)


def documents() -> list[Path]:
    docs = ROOT / "docs"
    return [ROOT / "README.md", *(sorted(docs.rglob("*.md")) if docs.is_dir() else [])]


def snippets(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, the code dedented) of each ```python block of ``path``."""
    text = path.read_text()
    found = []
    for m in FENCE.finditer(text):
        indent = m["indent"]
        lines = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in m["body"].splitlines()]
        found.append((text.count("\n", 0, m.start()) + 1, "\n".join(lines) + "\n"))
    return found


SNIPPETS = [(path, line, code) for path in documents() for line, code in snippets(path)]


def _first_line(code: str) -> str:
    return next((ln.strip() for ln in code.splitlines() if ln.strip()), "")


def test_the_readme_has_python_snippets_and_each_is_found():
    """Guards the parametrization below: a change of fence style must not leave the snippets unrun."""
    assert snippets(ROOT / "README.md"), "README.md has no ```python block: the library section shows one"
    for doc in documents():
        opened = len(re.findall(r"^[ \t]*```python", doc.read_text(), re.MULTILINE))
        assert len(snippets(doc)) == opened, f"a ```python block of {doc.name} has no closing fence at its indent"


def test_blocks_in_list_items_are_found_dedented_and_other_languages_left_alone(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("# page\n\n```sh\nls\n```\n\n- a step:\n\n  ```python\n  a = 1\n  if a:\n      b = 2\n  ```\n")
    assert snippets(doc) == [(9, "a = 1\nif a:\n    b = 2\n")]


@pytest.mark.parametrize(
    "path, line, code",
    SNIPPETS,
    ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _ in SNIPPETS],
)
def test_snippet_runs(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a snippet writes lands here
    given: dict = {}
    exec(compile(PREAMBLE, "<readme preamble>", "exec"), given)
    namespace = {"__name__": "__snippet__", **{name: given[name] for name in PREAMBLE_NAMES}}
    where = f"{path.relative_to(ROOT)}:{line}"
    try:  # compiled with blank lines before it, so that a traceback's line numbers are the document's
        exec(compile("\n" * line + code, str(path), "exec"), namespace)
        return
    except Exception as exc:
        at = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        error = f"fails at {path.name}:{at[-1] if at else '?'}: {type(exc).__name__}: {exc}"
    pytest.fail(
        f"the snippet at {where} starting {_first_line(code)!r} {error}\n"
        f"(it may assume only {', '.join(PREAMBLE_NAMES)}; see tests/test_readme.py)",
        pytrace=False,
    )


# ------------------------------------------------------------------ what the documents name exists

README_MAX_LINES = 250  # the README is for users; the reference is docs/
LINK = re.compile(r"\]\((?!https?://|#)(?P<target>[^)#\s]+)")
MAKE = re.compile(r"`make (?P<target>[a-z-]+)")
PYTHON_M = re.compile(r"python -m (?P<module>[A-Za-z_][\w.]*)")
DOTTED = re.compile(r"`(?P<name>modeconn(?:\.\w+)+)")
PROJECT = {"modeconn", "stages", "tools"}  # the packages `python -m` runs from the project
HISTORY = re.compile(r"\bissues? #?\d+|\bearlier runs?\b|\bprevious runs?\b|\bsession\b", re.IGNORECASE)


def _text(doc: Path) -> str:
    return doc.read_text()


def test_the_readme_is_short():
    lines = len(_text(ROOT / "README.md").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference to docs/"
    )


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_to_files_that_exist(doc):
    missing = [m["target"] for m in LINK.finditer(_text(doc)) if not (doc.parent / m["target"]).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_make_targets_and_python_modules_exist(doc):
    text = _text(doc)
    makefile = _text(ROOT / "Makefile")
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.MULTILINE))
    unknown = sorted({m["target"] for m in MAKE.finditer(text)} - targets)
    assert not unknown, f"{doc.relative_to(ROOT)} names make targets the Makefile lacks: {unknown}"
    modules = {m["module"] for m in PYTHON_M.finditer(text)}  # `python -m stages.<name>` gives "stages."

    def runnable(name: str) -> bool:
        path = ROOT / name.replace(".", "/")
        return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()

    absent = sorted(n for n in modules if n.split(".")[0] in PROJECT and not n.endswith(".") and not runnable(n))
    assert not absent, f"{doc.relative_to(ROOT)} runs `python -m` modules that do not exist: {absent}"


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_names_resolve(doc):
    """`modeconn.x.y` in the text is a module or an attribute of one (a rename leaves no stale name)."""
    broken = []
    for name in sorted({m["name"] for m in DOTTED.finditer(_text(doc))}):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                broken.append(name)
            break
        else:
            broken.append(name)
    assert not broken, f"{doc.relative_to(ROOT)} names library objects that do not exist: {broken}"


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_history(doc):
    """README and docs say what is; history is git log."""
    found = [m[0] for m in HISTORY.finditer(_text(doc))]
    assert not found, f"{doc.relative_to(ROOT)} refers to history: {found}"


def test_the_params_reference_names_every_key():
    """docs/pipeline.md is the reference of params.yaml: every section and every key of it is named there."""
    page = _text(ROOT / "docs/pipeline.md")
    params = yaml.safe_load(_text(ROOT / "params.yaml"))
    missing = [f"**{s}**" for s in params if f"**{s}**" not in page]
    missing += [f"{s}.{k}" for s, keys in params.items() for k in keys if f"`{k}`" not in page]
    assert not missing, f"docs/pipeline.md does not document these sections or keys of params.yaml: {missing}"
