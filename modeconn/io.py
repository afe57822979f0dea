"""Atomic file writes and checkpoints.

Nothing is ever half-written: every file goes to a temporary name in the same
folder and is moved into place with ``os.replace``; a folder of outputs is
built as a temporary sibling and swapped in whole. Checkpoints are plain
state dicts plus the model spec (name and arguments), loaded with
``weights_only=True``; a missing, corrupt or mismatched file is a
:class:`~modeconn.errors.CheckpointError` that names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .models import from_spec


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` whole.

    On an exception the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_file(path: Path | str, what: str, hint: str) -> Any:
    """``torch.load(weights_only=True)`` with errors for people.

    ``what`` names the artifact ("endpoint checkpoint"), ``hint`` says how to
    make it again ("Train it again.").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}. {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise CheckpointError(
            f"{what} {path} is corrupt or not a modeconn file ({type(exc).__name__}: {exc}). "
            f"Delete it and {hint[0].lower() + hint[1:]}"
        ) from None


def save_checkpoint(path: Path | str, spec: dict, state_dict: dict, **extra: Any) -> None:
    """Save a model checkpoint: ``{"spec": spec, "state_dict": ..., **extra}``.

    ``spec`` is ``{"name", "num_classes", "in_channels", "input_size", "args"}``,
    enough for :func:`modeconn.models.create_model` to rebuild the network.
    """
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    atomic_torch_save({"format": "modeconn.checkpoint/1", "spec": spec, "state_dict": state, **extra}, path)


def load_checkpoint(path: Path | str, hint: str = "Save it again with save_checkpoint.") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; validates its layout."""
    ckpt = load_file(path, "checkpoint", hint)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "modeconn.checkpoint/1" or "spec" not in ckpt:
        raise CheckpointError(f"{path} is not a modeconn checkpoint (no spec/state_dict). {hint}")
    return ckpt


def build_from_checkpoint(ckpt: dict, path: Path | str = "<checkpoint>") -> torch.nn.Module:
    """Rebuild the network of a checkpoint and load its weights (strict)."""
    spec = ckpt["spec"]
    model = from_spec(spec)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model spec {spec}: {exc}") from None
    return model


def same_architecture(checkpoints: list[dict], names: list[str] | tuple[str, ...], hint: str) -> dict:
    """The spec (architecture and arguments) shared by ``checkpoints`` (the networks a curve or a plane joins); a
    :class:`CheckpointError` naming the first and the first that differs from it (``names``), ending with
    ``hint``, where the specs differ."""
    spec = checkpoints[0]["spec"]
    for name, ckpt in zip(names[1:], checkpoints[1:]):
        if ckpt["spec"] != spec:
            raise CheckpointError(
                f"{names[0]} and {name} are of different architectures ({spec} vs {ckpt['spec']}): {hint}"
            )
    return spec
