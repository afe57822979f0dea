"""What keys a training stage's saved state: :func:`resume_state` (its settings, input files, code, package
versions and runtime), and where the state lives."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import torch

import modeconn
from modeconn.resume import ResumeState, as_plain, code_digests, digest, fingerprint, saved_parts
from modeconn.runtime import Runtime

from .cli import log
from .config import SECTIONS, ModelConfig
from .launch import NPROC_ENV
from .layout import RESUME_DIR

STAGES = Path(__file__).resolve().parents[1]  # the stages package, whose code is part of every key


def resume_state(run: str, runtime: Runtime, *settings: Any, inputs: tuple[Path, ...] = ()) -> ResumeState:
    """Where training run ``run`` (e.g. ``train_endpoint/seed_0``) saves its state each epoch, keyed by all that
    determines the run (DESIGN decision 10): its ``settings`` (config sections, named by their section; dicts of
    other values, named by their keys), the runtime, the content of its ``inputs`` files and of the weights file
    of a ``model`` section among the settings (``model.weights``), and the code: every ``.py`` file of the
    ``modeconn`` and ``stages`` packages, read once per process, and the versions of torch, torchvision and
    timm (:func:`package_versions`).

    Why all of the code rather than the modules the stage imports or the files its dvc.yaml deps list: both of
    those are narrower than what can change the run (modules imported lazily, mid-run; deps lists kept by hand,
    which a new import silently outgrows), and a code file left out is a state continued under other code —
    wrong numbers with no sign. All of it costs, at worst, the saved epochs of a preempted run after an edit of
    code it does not run; the digest takes milliseconds. A state of this run saved under another key is
    deleted with one warning that names what changed (settings by key, input files by name, code files by
    path), from the components the state records.

    The folder is $MODECONN_RESUME_DIR or ``.modeconn/resume`` — outside every DVC output, so a rerun of the
    stage (which deletes its outputs first) finds it.

    The number of processes is part of the key, and a run of N > 1 processes keeps its state in a subfolder
    ``processes_N`` of its own: N processes agree with one only to float precision (and with BatchNorm on
    gloo, where each process normalises with its shard, not at all), so continuing a state under another count
    would break the promise that a resumed run ends where an uninterrupted one does. A state saved by another
    process count under the same settings is therefore neither used nor deleted: rank 0 warns, naming that
    count and how to continue it ($MODECONN_NPROC), and this run starts from scratch.
    """
    root = Path(os.environ.get("MODECONN_RESUME_DIR", RESUME_DIR)) / run
    named, files = _named_settings(settings), {str(p): Path(p) for p in inputs}
    for s in settings:
        if isinstance(s, ModelConfig) and s.weights is not None:  # the network starts from it: by content too
            files["model.weights"] = Path(s.weights)
    digests = {name: digest(p) if p.is_file() else "missing" for name, p in files.items()}  # the stage names it
    code = {**code_digests(Path(modeconn.__file__).parent, STAGES), **package_versions()}

    def parts_for(processes: int) -> dict:
        where = {"device": runtime.device.type, "precision": runtime.precision, "channels_last": runtime.channels_last}
        if runtime.device.type == "cpu":  # the thread count changes a CPU run's rounding (a GPU run's: no)
            where["threads"] = torch.get_num_threads()
        return {"settings": {**named, "runtime": {**where, "processes": processes}}, "inputs": digests, "code": code}

    def key_for(processes: int) -> str:
        return fingerprint(run, parts_for(processes))

    def folder_for(processes: int) -> Path:
        return root if processes == 1 else root / f"processes_{processes}"

    if runtime.is_main:
        counts = [1] + sorted(int(d.name.split("_")[1]) for d in root.glob("processes_*") if d.name[10:].isdigit())
        for n in counts:
            if n != runtime.world_size and any(
                same_run_but_threads(saved_parts(f), parts_for(n)) for f in folder_for(n).glob("*.pt")
            ):
                log.warning(
                    "a resume state of %s saved by %d process(es) is in %s (kept, not used): this run has %d; "
                    "rerun with %s=%d to continue it",
                    run,
                    n,
                    folder_for(n),
                    runtime.world_size,
                    NPROC_ENV,
                    n,
                )
    ws = runtime.world_size
    return ResumeState(folder_for(ws), key_for(ws), runtime=runtime, parts=parts_for(ws))


def same_run_but_threads(saved: Any, parts: dict) -> bool:
    """Whether a state's recorded ``parts`` are ``parts`` up to the CPU thread count: the same run saved by
    another process count, whose processes ran with their own thread count (torchrun gives each one thread)."""

    def plain(p: dict) -> str:
        runtime = {k: v for k, v in p["settings"]["runtime"].items() if k != "threads"}
        return json.dumps({**p, "settings": {**p["settings"], "runtime": runtime}}, sort_keys=True, default=str)

    try:
        return plain(saved) == plain(parts)
    except (KeyError, TypeError, AttributeError):  # no parts recorded (an older state), or another layout
        return False


def package_versions() -> dict[str, str]:
    """The versions of the packages whose code builds and trains the networks (torch, torchvision, and timm
    where installed), as entries of a resume key's code: a state saved under another torch is not continued."""
    versions = {}
    for name in ("torch", "torchvision", "timm"):
        try:
            versions[f"package {name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _named_settings(settings: tuple) -> dict:
    """The settings of a resume key by name, as plain data: a config section under its section's name, a dict's
    entries under their keys, anything else as ``setting N``."""
    sections = {cls: name for name, cls in SECTIONS.items()}
    named: dict = {}
    for i, s in enumerate(settings, 1):
        if type(s) in sections:
            named[sections[type(s)]] = as_plain(s)
        elif isinstance(s, dict):
            named.update(as_plain(s))
        else:
            named[f"setting {i}"] = as_plain(s)
    return named
