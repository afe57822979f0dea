"""Weights from a local file: reading a state dict, loading it into a model with a fresh classifier head.

A pretrained network (e.g. an ImageNet ResNet-50, as for the paper's FGE run from a pretrained model,
Section 5.4) fine-tuned on data of another number of classes keeps its classifier head freshly
initialised; every other tensor must fit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from modeconn.errors import ConfigError

log = logging.getLogger(__name__)


def read_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file: a plain state dict, a modeconn checkpoint, or a dict with
    a ``state_dict`` / ``model`` entry; a ``module.`` prefix (DataParallel/DDP) is removed.

    Loaded with ``weights_only=True``; an unreadable file or one without tensors is a ConfigError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on a corrupt or foreign file
        raise ConfigError(f"cannot read weights file {path}: {type(e).__name__}: {str(e)[:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights", new_head: bool = True
) -> list[str]:
    """Load ``state`` into ``model``; returns the names of the tensors left freshly initialised.

    Every tensor of the model must be in ``state`` under its name and shape, with one exception when
    ``new_head``: the classifier head, when the file was trained for another number of classes (e.g.
    ImageNet's 1,000 vs an image folder's 3). Its tensors — those whose shapes differ only in the first
    dimension, in the modules whose output is the model's classes — keep the builder's initialisation,
    and a warning says so. Anything else that differs is a ConfigError naming ``source`` and the tensors.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else ""]  # fmt: skip
        raise ConfigError(
            f"{source} does not fit the model: {'; '.join(p for p in parts if p)} tensor names. "
            "Is it a state dict of the same architecture (model.name and model.args)?"
        )
    mismatched = [k for k in own if own[k].shape != state[k].shape]
    head = _head_tensors(model)
    bad = [k for k in mismatched if not (new_head and k in head and own[k].shape[1:] == state[k].shape[1:])]
    if bad:
        k = bad[0]
        raise ConfigError(
            f"{source} does not fit the model: {len(bad)} tensor(s) of another shape, e.g. {k!r} "
            f"{list(state[k].shape)} in the file vs {list(own[k].shape)} in the model"
            + ("" if new_head else " (a classifier of another number of classes: fine-tune it on this data first)")
        )
    model.load_state_dict({k: (own[k] if k in mismatched else v) for k, v in state.items()})
    if mismatched:
        classes = {int(state[k].shape[0]) for k in mismatched}
        log.warning(
            "%s: classifier of %s classes, the model has %d: %s re-initialised, every other tensor loaded",
            source, "/".join(map(str, sorted(classes))), int(own[mismatched[0]].shape[0]), ", ".join(mismatched),
        )  # fmt: skip
    return mismatched


def _head_tensors(model: nn.Module) -> set[str]:
    """Names of the tensors of the classifier head: the last Linear (or 1x1 Conv2d) module of the model."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
            last = name
    if last is None:
        return set()
    prefix = f"{last}." if last else ""
    return {k for k in model.state_dict() if k.startswith(prefix) and "." not in k[len(prefix) :]}
