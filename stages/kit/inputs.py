"""What a stage reads: the prepared data on the runtime's device, its training, test and measuring batches, and
checkpoints (the endpoints', or the user's own)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import torch

from modeconn.data import EVAL_BATCH, EvalBatches, Loader, Prepared, eval_batches, load_prepared, read_info
from modeconn.errors import CheckpointError, ConfigError
from modeconn.io import load_checkpoint, load_file
from modeconn.models import from_spec, load_weights, read_weights
from modeconn.runtime import Runtime

from .config import read_sections
from .launch import FaultyBatches, fault_step
from .layout import CURVE_EVAL_HINT, ENDPOINT_HINT, PREPARED_HINT, SIMPLEX_HINT, simplex_dir


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


def read_predictions(path: Path, what: str, hint: str, points: bool = False) -> dict:
    """A stored predictions file: a dict with ``logprobs`` [N, K] and ``labels`` [N] (with ``points``, one of
    eval_curve's files of a path: ``t`` [P] and ``logprobs`` [P, N, K]). A file that is not one (a key missing,
    sizes that disagree) is a CheckpointError naming it, what is wrong and ``hint`` (how to make it again)."""
    blob = load_file(path, what, hint)
    keys = ("t", "logprobs", "labels") if points else ("logprobs", "labels")
    missing = [k for k in keys if not (isinstance(blob, dict) and torch.is_tensor(blob.get(k)))]
    if missing:
        raise CheckpointError(
            f"{what} {path} has no {' or '.join(missing)} tensor: it is not a predictions file. {hint}"
        )
    logprobs, labels = blob["logprobs"], blob["labels"]
    lead = (blob["t"].numel(),) if points else ()
    if labels.dim() != 1 or logprobs.dim() != len(lead) + 2 or logprobs.shape[:-1] != (*lead, labels.numel()):
        expected = ", ".join(map(str, (*lead, labels.numel(), "K")))
        raise CheckpointError(
            f"{what} {path} holds log-probabilities of shape {tuple(logprobs.shape)} for {labels.numel()} labels"
            f"{f' at {lead[0]} points t' if points else ''} (expected [{expected}]): delete it. {hint}"
        )
    return blob


def path_predictions(curve_eval: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict]:
    """eval_curve's t grid [P], test log-probs per path [P, N, K], the test labels [N], and the validation
    log-probs per path [P, N_val, K] (empty where the run has no validation split)."""
    blobs = {
        name: read_predictions(curve_eval / f"{name}.pt", f"{name} evaluation", CURVE_EVAL_HINT, points=True)
        for name in ("curve", "segment")
    }
    c, s = blobs["curve"], blobs["segment"]
    if not (torch.equal(c["t"], s["t"]) and torch.equal(c["labels"], s["labels"])):
        raise CheckpointError(
            f"{curve_eval}: curve.pt and segment.pt are of different t grids or test sets: rerun `dvc repro eval_curve`"
        )
    val = {name: b["val_logprobs"] for name, b in blobs.items() if b.get("val_logprobs") is not None}
    for name, lp in val.items():
        if not torch.is_tensor(lp) or lp.dim() != 3 or lp.shape[0] != c["t"].numel():
            raise CheckpointError(
                f"{curve_eval / f'{name}.pt'}: its validation log-probabilities are not one row per t: "
                "rerun `dvc repro eval_curve`"
            )
    return c["t"].double(), {"curve": c["logprobs"], "segment": s["logprobs"]}, c["labels"], val


def simplex_predictions(simplex: Path, seeds: typing.Sequence[int]) -> list[dict]:
    """The stored predictions of the simplex stage's sampled points (ESPRO's members), one dict per seed in order:
    ``cost`` (epochs), ``logprobs`` [n, N, K], ``labels`` [N], ``val_logprobs`` [n, N_val, K] / ``val_labels``
    (or None). A missing or malformed file is a CheckpointError naming it and the stage to rerun."""
    runs = []
    for seed in seeds:
        path = simplex_dir(simplex, seed) / "predictions.pt"
        what = f"predictions of the simplex of seed {seed}"
        blob = load_file(path, what, SIMPLEX_HINT)
        lp, y = (blob.get(k) if isinstance(blob, dict) else None for k in ("logprobs", "labels"))
        if not (torch.is_tensor(lp) and torch.is_tensor(y) and lp.dim() == 3 and lp.shape[1] == y.numel()):
            raise CheckpointError(f"{what} {path} is not a file of the simplex stage's sampled points. {SIMPLEX_HINT}")
        runs.append({**blob, "val_logprobs": blob.get("val_logprobs"), "cost": float(blob["cost"])})
    return runs


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
