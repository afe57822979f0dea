"""What a stage reads: the prepared data on the runtime's device, its training, test and measuring batches, and
checkpoints (the endpoints', or the user's own)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import torch

from modeconn.data import EVAL_BATCH, EvalBatches, Loader, Prepared, eval_batches, load_prepared, read_info
from modeconn.errors import CheckpointError, ConfigError
from modeconn.io import load_checkpoint
from modeconn.models import from_spec, load_weights, read_weights
from modeconn.runtime import Runtime

from .config import read_sections
from .launch import FaultyBatches, fault_step
from .layout import ENDPOINT_HINT, PREPARED_HINT


def prepared_data(prepared: Path, runtime: Runtime) -> Prepared:
    """The prepare stage's output, its tensors on the runtime's device."""
    return load_prepared(prepared, runtime.device, hint=PREPARED_HINT)


def train_loader(data: Prepared, batch_size: int, seed: int, runtime: Runtime) -> Loader:
    """The shuffled, augmented training batches of a training stage; this process's shard of each under torchrun
    (with the $MODECONN_FAULT_RANK=R:I drill, rank R's raise at its I-th batch)."""
    loader = Loader(
        data.train,
        data.info,
        batch_size,
        train=True,
        seed=seed,
        drop_last=True,
        channels_last=runtime.channels_last,
        shard=runtime.shard,
    )
    step = fault_step(runtime)
    return FaultyBatches(loader, runtime.rank, step) if step else loader  # type: ignore[return-value]


def test_loader(data: Prepared, runtime: Runtime, split: str = "test") -> Loader:
    """The in-order, un-augmented batches of the test (or ``val``) split, for per-epoch and snapshot predictions."""
    return Loader(getattr(data, split), data.info, EVAL_BATCH, train=False, channels_last=runtime.channels_last)


def val_split(data: Prepared, runtime: Runtime) -> tuple[Loader | None, Any]:
    """(batches, labels) of the validation split, or (None, None) where ``data.val_size`` is 0."""
    if data.val is None:
        return None, None
    return test_loader(data, runtime, "val"), data.val.y.cpu()


def measurement_batches(data: Prepared, cfg: Any, runtime: Runtime) -> EvalBatches:
    """The passes that measure a point (BN, train subset, test, val) with the sizes of an eval-like section
    (``batch_size``, ``bn_samples``, ``train_samples``, optional ``test_samples``, ``seed``)."""
    return eval_batches(
        data,
        cfg.batch_size,
        bn_samples=cfg.bn_samples,
        train_samples=getattr(cfg, "train_samples", 0),
        test_samples=getattr(cfg, "test_samples", 0),
        seed=cfg.seed,
        channels_last=runtime.channels_last,
    )


def endpoint_checkpoint(path: Path) -> dict:
    """An endpoint checkpoint written by train_endpoint."""
    return load_checkpoint(path, ENDPOINT_HINT)


def user_checkpoints(paths: typing.Sequence[Path], params: Path, prepared: Path, key: str, new_head: bool) -> list:
    """Checkpoints of the user's own (``curve.endpoint_files``, ``fge.start_files``) as modeconn checkpoints.

    A modeconn checkpoint keeps its spec, which must fit the prepared data; a plain state dict (or a file with a
    ``state_dict`` entry) is loaded into the network of params.yaml's ``model`` section on that data
    (modeconn.models.load_weights: with ``new_head``, a classifier of another number of classes stays freshly
    initialised). A file that does not fit is a CheckpointError naming ``key`` and the file.
    """
    info = read_info(prepared, hint="Run the prepare stage first (`dvc repro prepare`).")
    ckpts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CheckpointError(f"{key}: {path} not found")
        raw = torch_load_plain(path)
        if isinstance(raw, dict) and raw.get("format") == "modeconn.checkpoint/1":
            ckpt = load_checkpoint(path)
            spec = ckpt["spec"]
            if (spec["num_classes"], spec["in_channels"]) != (info.num_classes, info.channels):
                raise CheckpointError(
                    f"{key}: {path} is a {spec['name']} for {spec['num_classes']} classes of {spec['in_channels']} "
                    f"channel(s); the data ({info.name}) has {info.num_classes} classes of {info.channels}"
                )
        else:
            (model_cfg,) = read_sections(params, "model")
            spec = model_cfg.spec(info)
            model = from_spec(spec)
            try:
                load_weights(model, read_weights(path), f"{key}: {path} ({spec['name']})", new_head=new_head)
            except ConfigError as exc:
                raise CheckpointError(str(exc)) from None
            ckpt = {"format": "modeconn.checkpoint/1", "spec": spec, "state_dict": model.state_dict()}
        ckpts.append(ckpt)
    return ckpts


def torch_load_plain(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
