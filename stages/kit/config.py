"""params.yaml: read it, and validate each section into a frozen dataclass whose errors name the bad key.

One dataclass per section (``data``, ``model``, ``train``, ``curve``, ``eval``,
``fge``, ``sse``, ``compare``, ``plane``, ``plane_points``, ``path_ensembles``, ``barriers``, ``curvature``,
``simplex``, and the experiments' ``subset``, ``width`` and ``instability``); a stage reads
only the sections dvc.yaml lists for it. Unknown sections, unknown keys,
missing keys, wrong types and out-of-range values are ConfigErrors that say
``section.key``, the params file and what is allowed. Every key must be set:
no setting of the paper is assumed silently. The few optional keys (a default
in the dataclass, :func:`optional_keys`) mean "not used" when absent.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from modeconn import ensemble
from modeconn.curves import check_curve_args
from modeconn.data import AUGMENTATIONS, DATASETS, DatasetInfo, check_image_folder
from modeconn.data.prepared import IMAGEFOLDER_KEYS
from modeconn.errors import ConfigError
from modeconn.models import MODELS, from_spec, load_weights, model_spec, read_weights


def read_params(path: Path) -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"params file {path} not found: run from the project root or pass --params")
    try:
        params = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of sections (data, model, train, ...)")
    unknown = sorted(str(name) for name in set(params) - set(KNOWN_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section {unknown[0]!r} in {path}; the sections are: {', '.join(KNOWN_SECTIONS)} "
            "(a misspelt section would be ignored: fix or remove it)"
        )
    return params


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key} must not be null")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return tuple(_check_type(v, arg, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 5e-4 as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")


T = typing.TypeVar("T")


def optional_keys(cls: type) -> tuple[str, ...]:
    """The keys of section dataclass ``cls`` a params file may leave out: those with a default (each means
    "not used" when absent, e.g. ``fge.start_files``); every other key must be set."""
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
    )


def section(params: dict, name: str, cls: type[T], source: str | Path = "params.yaml") -> T:
    """Validate ``params[name]`` (read from the file ``source``) into the frozen dataclass ``cls``.

    Unknown keys, missing keys and wrong types are ConfigErrors naming
    ``name.key`` and ``source``; ``cls.__post_init__`` checks ranges the same way (its messages name the key,
    and ``source`` is appended here).
    Only the keys of :func:`optional_keys` may be left out.
    """
    raw = params.get(name)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} has no '{name}' section (or it is not a mapping)")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]} in {source}; {name} takes: {', '.join(fields)}")
    optional = optional_keys(cls)
    values = {}
    try:  # one place names the file for every message, the types' and cls.__post_init__'s ranges alike
        for key in fields:
            if key not in raw:
                if key not in optional:
                    raise ConfigError(
                        f"missing key {name}.{key} in {source}: every key of {name} must be set "
                        f"(no default is assumed; {name} takes: {', '.join(fields)})"
                    )
                continue
            values[key] = _check_type(raw[key], hints[key], f"{name}.{key}")
        return cls(**values)
    except ConfigError as exc:
        if str(source) in str(exc):
            raise
        raise type(exc)(f"{exc} (in {source})") from None


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_batch_size(key: str, batch_size: int, n_train: int, where: str | Path) -> None:
    """A training batch no larger than the training set (of the prepared data at ``where``): each epoch drops its
    last incomplete batch, so a larger batch would make epochs of no batches."""
    require(
        batch_size <= n_train,
        f"{key} {batch_size} is larger than the {n_train} training images of {where}: lower it to at most "
        f"{n_train} (each epoch drops its last incomplete batch, so it would train on none)",
    )


STARTS = (("fge", "start_seeds"), ("simplex", "seeds"), ("simplex", "triangle"))  # endpoint seeds named elsewhere
START_EPOCHS = ("fge", "simplex")  # sections whose start_epoch names an endpoint checkpoint


def check_endpoint_refs(raw: dict, path: str | Path) -> None:
    """The endpoints other sections start from are ones the pipeline trains: each seed they name is in
    train.seeds and each start_epoch in train.save_epochs or train.epochs. A section given ``start_files`` of
    your own names no endpoint and is not checked (nor is anything without a train section)."""
    train = raw.get("train") or {}
    if not train:
        return
    seeds, epochs = list(train.get("seeds") or []), {*(train.get("save_epochs") or []), train.get("epochs")}
    for name, key in STARTS:
        sec = raw.get(name) or {}
        if key == "triangle" or not sec.get("start_files"):
            for s in sec.get(key) or []:
                require(s in seeds, f"{name}.{key}: seed {s} is not in train.seeds {seeds} (in {path}): add it there")
    for name in START_EPOCHS:
        sec = raw.get(name) or {}
        if "start_epoch" in sec and not sec.get("start_files"):
            require(
                sec["start_epoch"] in epochs,
                f"{name}.start_epoch {sec['start_epoch']} is neither in train.save_epochs nor train.epochs (in "
                f"{path}): add it to train.save_epochs (an endpoint checkpoint is kept only at those epochs)",
            )


def check_sgd(name: str, cfg: Any) -> None:
    """The SGD settings every training section shares: batch_size, momentum, wd (and lr where it has one)."""
    require(cfg.batch_size >= 1, f"{name}.batch_size must be at least 1, got {cfg.batch_size}")
    if hasattr(cfg, "lr"):
        require(cfg.lr > 0, f"{name}.lr must be positive, got {cfg.lr}")
    require(0 <= cfg.momentum < 1, f"{name}.momentum must be in [0, 1), got {cfg.momentum}")
    require(cfg.wd >= 0, f"{name}.wd must be non-negative, got {cfg.wd}")


# ---------------------------------------------------------------- the sections


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: which dataset, where its raw files are, the validation split and augmentation."""

    name: str
    raw_dir: str
    val_size: int
    augment: str
    seed: int
    download: bool
    synthetic: dict = dataclasses.field(default_factory=dict)  # optional: only read where name is synthetic
    imagefolder: dict = dataclasses.field(default_factory=dict)  # optional (name: imagefolder needs it): root, size,
    # [resize, max_per_class, mean, std]

    def __post_init__(self):
        require(
            self.name in DATASETS, f"data.name {self.name!r} is not a known dataset; use one of {', '.join(DATASETS)}"
        )
        if self.name == "imagefolder":
            check_imagefolder_section(self.imagefolder)
        require(self.val_size >= 0, f"data.val_size must be 0 (no validation split) or positive, got {self.val_size}")
        require(
            self.augment == "default" or self.augment in AUGMENTATIONS,
            f"data.augment {self.augment!r} unknown; use default or one of {', '.join(AUGMENTATIONS)}",
        )


def check_imagefolder_section(options: dict) -> None:
    """``data.imagefolder``: known keys, root/size present, the folder's layout (train/, val/ or test/, the same
    class folders in both)."""
    unknown = sorted(set(options) - set(IMAGEFOLDER_KEYS))
    require(
        not unknown,
        f"unknown key data.imagefolder.{unknown[0] if unknown else ''}; it takes: {', '.join(IMAGEFOLDER_KEYS)}",
    )
    for key in ("root", "size"):
        require(key in options, f"missing key data.imagefolder.{key} (data.name is imagefolder)")
    require(isinstance(options["root"], str), f"data.imagefolder.root must be a path, got {options['root']!r}")
    size = options["size"]
    require(
        isinstance(size, int) and not isinstance(size, bool) and size >= 1,
        f"data.imagefolder.size must be a positive integer, got {size!r}",
    )
    resize = options.get("resize")
    require(
        resize is None or (isinstance(resize, int) and not isinstance(resize, bool) and resize >= size),
        f"data.imagefolder.resize must be an integer >= size ({size}), got {resize!r}",
    )
    per_class = options.get("max_per_class", 0)
    require(
        isinstance(per_class, int) and not isinstance(per_class, bool) and per_class >= 0,
        f"data.imagefolder.max_per_class must be 0 (all) or positive, got {per_class!r}",
    )
    for key in ("mean", "std"):
        v = options.get(key)
        require(
            v is None or (isinstance(v, list) and len(v) == 3 and all(isinstance(c, (int, float)) for c in v)),
            f"data.imagefolder.{key} must be 3 numbers (R, G, B) or absent (computed from train), got {v!r}",
        )
    require(
        (options.get("mean") is None) == (options.get("std") is None),
        "data.imagefolder.mean and data.imagefolder.std go together: set both or neither",
    )
    try:
        check_image_folder(options["root"])
    except ConfigError as exc:
        raise ConfigError(f"data.imagefolder.root: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``model``: the architecture every trained network uses (see modeconn.models); ``weights``: an optional
    local weights file every new network of this section starts from (never a download)."""

    name: str
    args: dict = dataclasses.field(default_factory=dict)  # optional: {} = the builder's own defaults
    weights: str | None = None  # optional: None = fresh weights

    def build(self, info: DatasetInfo) -> Any:
        """A new network of :meth:`spec`, with ``weights`` loaded when set (a head of another number of classes
        stays freshly initialised, see modeconn.models.load_weights)."""
        model = from_spec(self.spec(info))
        if self.weights is not None:
            load_weights(model, read_weights(self.weights), f"model.weights {self.weights}")
        return model

    def spec(self, info: DatasetInfo) -> dict:
        """The model spec of this network on the dataset ``info`` (what checkpoints carry)."""
        return model_spec(self.name, info.num_classes, info.channels, info.size, self.args)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: endpoint training (paper: 200 epochs, lr 0.05 (VGG) / 0.1, wd 5e-4, batch 128)."""

    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    wd: float
    save_epochs: tuple[int, ...]

    def __post_init__(self):
        require(len(self.seeds) >= 1, "train.seeds must list at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), f"train.seeds has a seed twice: {list(self.seeds)}")
        require(self.epochs >= 1, f"train.epochs must be at least 1, got {self.epochs}")
        check_sgd("train", self)
        for e in self.save_epochs:
            require(1 <= e <= self.epochs, f"train.save_epochs: {e} is outside 1..train.epochs ({self.epochs})")


@dataclasses.dataclass(frozen=True)
class CurveConfig:
    """``curve``: the path between two endpoints (paper: 3 bends, 600 ep lr 0.015 VGG / 200 ep lr 0.03)."""

    endpoints: tuple[int, ...]
    type: str
    num_bends: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    wd: float
    seed: int
    init: str
    endpoint_files: tuple[str, ...] = ()  # optional: two checkpoints of your own instead of the seeds' endpoints

    def __post_init__(self):
        require(
            len(self.endpoint_files) in (0, 2) and len(set(self.endpoint_files)) == len(self.endpoint_files),
            f"curve.endpoint_files must name two different files (or none), got {list(self.endpoint_files)}",
        )
        require(len(self.endpoints) == 2, f"curve.endpoints must name two seeds, got {list(self.endpoints)}")
        require(
            self.endpoints[0] != self.endpoints[1],
            f"curve.endpoints names seed {self.endpoints[0]} twice: a curve joins two different networks",
        )
        check_curve_args(self.type, self.num_bends)
        require(self.epochs >= 1, f"curve.epochs must be at least 1, got {self.epochs}")
        check_sgd("curve", self)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``eval``: the t grid and evaluation sizes (paper: 61 points, whole training set)."""

    num_points: int
    batch_size: int
    bn_samples: int
    train_samples: int
    ensemble: str
    seed: int
    align: bool  # also the segment to ŵ2 permuted into line with ŵ1 (weight matching, modeconn.align)

    def __post_init__(self):
        require(
            self.num_points >= 2,
            f"eval.num_points must be at least 2 (the t grid includes both ends), got {self.num_points}",
        )
        require(self.batch_size >= 1, f"eval.batch_size must be at least 1, got {self.batch_size}")
        require(self.bn_samples >= 0, f"eval.bn_samples must be 0 (all) or positive, got {self.bn_samples}")
        require(self.train_samples >= 0, f"eval.train_samples must be 0 (all) or positive, got {self.train_samples}")
        require(
            self.ensemble in ensemble.METHODS,
            f"eval.ensemble {self.ensemble!r} unknown; use one of {', '.join(ensemble.METHODS)}",
        )


@dataclasses.dataclass(frozen=True)
class FgeConfig:
    """``fge``: paper: from epoch 160 of 200, 40 epochs, cycle 2, lr_1 0.05→lr_2 0.0005 (PreResNet)."""

    start_seeds: tuple[int, ...]
    start_epoch: int
    epochs: int
    cycle: float
    lr_1: float
    lr_2: float
    batch_size: int
    momentum: float
    wd: float
    seed: int
    start_files: tuple[str, ...] = ()  # optional: checkpoints of your own to start from instead of the seeds'
    # (start_epoch: their pretraining epochs, counted in the budget)

    def __post_init__(self):
        require(len(self.start_seeds) >= 1, "fge.start_seeds must list at least one endpoint seed")
        require(len(set(self.start_seeds)) == len(self.start_seeds), "fge.start_seeds has a seed twice")
        require(
            len(set(self.start_files)) == len(self.start_files),
            f"fge.start_files names a file twice: {list(self.start_files)}",
        )
        require(self.start_epoch >= 1, f"fge.start_epoch must be at least 1, got {self.start_epoch}")
        require(self.epochs >= 1, f"fge.epochs must be at least 1, got {self.epochs}")
        require(
            self.cycle > 0 and (self.cycle < 1 or float(self.cycle).is_integer() and int(self.cycle) % 2 == 0),
            f"fge.cycle = {self.cycle}: the cycle must be an even number of epochs (the snapshot is taken "
            "mid-cycle, at an epoch boundary), or a fraction of one epoch (e.g. 0.5) for short runs",
        )
        require(
            self.cycle / 2 <= self.epochs,
            f"fge.cycle = {self.cycle} is too long for fge.epochs = "
            f"{self.epochs}: no LR minimum (snapshot) would be reached",
        )
        require(self.lr_1 > 0 and self.lr_2 > 0, "fge.lr_1 and fge.lr_2 must be positive")
        require(
            self.lr_2 <= self.lr_1,
            f"fge.lr_2 ({self.lr_2}) must not exceed fge.lr_1 ({self.lr_1}): "
            "the LR cycles down from lr_1 to its minimum lr_2",
        )
        check_sgd("fge", self)


@dataclasses.dataclass(frozen=True)
class SseConfig:
    """``sse``: Snapshot Ensembles from scratch (Huang et al.: lr 0.1–0.2, cycles of B/M epochs)."""

    epochs: int
    cycles: int
    lr: float
    batch_size: int
    momentum: float
    wd: float
    seed: int

    def __post_init__(self):
        require(self.epochs >= 1, f"sse.epochs must be at least 1, got {self.epochs}")
        require(self.cycles >= 1, f"sse.cycles must be at least 1, got {self.cycles}")
        check_sgd("sse", self)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """``compare``: the budgets (multiples of B) and how members are combined."""

    budgets: tuple[int, ...]
    ensemble: str

    def __post_init__(self):
        require(
            len(self.budgets) >= 1 and all(b >= 1 for b in self.budgets),
            f"compare.budgets must list positive multiples of B, got {list(self.budgets)}",
        )
        require(
            self.ensemble in ensemble.METHODS,
            f"compare.ensemble {self.ensemble!r} unknown; use one of {', '.join(ensemble.METHODS)}",
        )


@dataclasses.dataclass(frozen=True)
class PlaneConfig:
    """``plane``: the grid and evaluation sizes (official code: 21 × 21, margin 0.2, whole sets)."""

    grid_points: int
    margin: float
    batch_size: int
    bn_samples: int
    train_samples: int
    test_samples: int
    seed: int

    def __post_init__(self):
        require(self.grid_points >= 2, f"plane.grid_points must be at least 2, got {self.grid_points}")
        require(self.margin >= 0, f"plane.margin must be non-negative, got {self.margin}")
        require(self.batch_size >= 1, f"plane.batch_size must be at least 1, got {self.batch_size}")
        require(self.bn_samples >= 0, f"plane.bn_samples must be 0 (all) or positive, got {self.bn_samples}")
        require(self.train_samples >= 0, f"plane.train_samples must be 0 (all) or positive, got {self.train_samples}")
        require(self.test_samples >= 0, f"plane.test_samples must be 0 (all) or positive, got {self.test_samples}")


@dataclasses.dataclass(frozen=True)
class PlanePointsConfig:
    """``plane_points``: the three networks the plane goes through (each ``{seed: s}``, an endpoint of
    train.seeds, or ``{file: path}``, a checkpoint of your own), the grid and evaluation sizes as in ``plane``."""

    points: tuple[dict, ...]
    grid_points: int
    margin: float
    batch_size: int
    bn_samples: int
    train_samples: int
    test_samples: int
    seed: int

    def __post_init__(self):
        require(len(self.points) == 3, f"plane_points.points must name three networks, got {len(self.points)}")
        for i, p in enumerate(self.points):
            key = f"plane_points.points[{i}]"
            require(
                isinstance(p, dict) and len(p) == 1 and set(p) <= {"seed", "file"},
                f"{key} must be {{seed: <an endpoint seed>}} or {{file: <a checkpoint>}}, got {p!r}",
            )
            if "seed" in p:
                seed = p["seed"]
                ok = isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
                require(ok, f"{key}.seed must be a non-negative integer (one of train.seeds), got {seed!r}")
            else:
                require(isinstance(p["file"], str) and p["file"], f"{key}.file must be a path, got {p['file']!r}")
        for i, p in enumerate(self.points):
            require(p not in self.points[:i], f"plane_points.points[{i}] repeats an earlier point: {p!r}")
        require(self.grid_points >= 2, f"plane_points.grid_points must be at least 2, got {self.grid_points}")
        require(self.margin >= 0, f"plane_points.margin must be non-negative, got {self.margin}")
        require(self.batch_size >= 1, f"plane_points.batch_size must be at least 1, got {self.batch_size}")
        for key in ("bn_samples", "train_samples", "test_samples"):
            n = getattr(self, key)
            require(n >= 0, f"plane_points.{key} must be 0 (all) or positive, got {n}")


@dataclasses.dataclass(frozen=True)
class PathEnsemblesConfig:
    """``path_ensembles``: how members are combined, the random direction's seed, BN recalibration size."""

    ensemble: str
    batch_size: int
    bn_samples: int
    seed: int

    def __post_init__(self):
        require(
            self.ensemble in ensemble.METHODS,
            f"path_ensembles.ensemble {self.ensemble!r} unknown; use one of {', '.join(ensemble.METHODS)}",
        )
        require(self.batch_size >= 1, f"path_ensembles.batch_size must be at least 1, got {self.batch_size}")
        require(self.bn_samples >= 0, f"path_ensembles.bn_samples must be 0 (all) or positive, got {self.bn_samples}")


@dataclasses.dataclass(frozen=True)
class BarriersConfig:
    """``barriers``: the barrier card of the paths between every pair of networks (train.seeds' endpoints, or
    ``files`` of your own): the t grid, the evaluation sizes, which paths, Frankle et al.'s threshold."""

    num_points: int
    batch_size: int
    bn_samples: int  # training images for BN recalibration and REPAIR's statistics at each t (0 = all)
    train_samples: int
    test_samples: int
    align: bool  # the aligned segment (weight matching)
    repair: bool  # the aligned segment with REPAIR at each t (needs align)
    threshold: float  # stable when the error barrier (max − mean of the ends) is below it (Frankle et al.: 0.02)
    seed: int
    files: tuple[str, ...] = ()  # optional: checkpoints of your own (two or more) instead of train.seeds' endpoints

    def __post_init__(self):
        require(self.num_points >= 2, f"barriers.num_points must be at least 2 (both ends), got {self.num_points}")
        require(self.batch_size >= 1, f"barriers.batch_size must be at least 1, got {self.batch_size}")
        for key in ("bn_samples", "train_samples", "test_samples"):
            n = getattr(self, key)
            require(n >= 0, f"barriers.{key} must be 0 (all) or positive, got {n}")
        require(
            not self.repair or self.align,
            "barriers.repair needs barriers.align: true (REPAIR is applied to the aligned segment)",
        )
        require(0 < self.threshold < 1, f"barriers.threshold must be an error fraction in (0, 1), got {self.threshold}")
        require(
            len(self.files) != 1 and len(set(self.files)) == len(self.files),
            f"barriers.files must name two or more different checkpoints (or none), got {list(self.files)}",
        )


@dataclasses.dataclass(frozen=True)
class CurvatureConfig:
    """``curvature``: the points of t per path, the training images of the Hessian (one fixed subset) and of BN
    recalibration, the Lanczos steps and Hutchinson probes per point, the seed of subset, start vector and probes."""

    num_points: int
    batch_size: int
    bn_samples: int
    train_samples: int
    iters: int
    probes: int
    seed: int

    def __post_init__(self):
        require(self.num_points >= 2, f"curvature.num_points must be at least 2 (the ends), got {self.num_points}")
        require(self.batch_size >= 1, f"curvature.batch_size must be at least 1, got {self.batch_size}")
        for key in ("bn_samples", "train_samples"):
            n = getattr(self, key)
            require(n >= 0, f"curvature.{key} must be 0 (all) or positive, got {n}")
        require(self.iters >= 1, f"curvature.iters (Lanczos steps) must be at least 1, got {self.iters}")
        require(self.probes >= 2, f"curvature.probes must be at least 2 (for a standard error), got {self.probes}")


@dataclasses.dataclass(frozen=True)
class SimplexConfig:
    """``simplex``: loss-surface simplexes (Benton et al. 2021: SPRO, and ESPRO ensembles of their points). One per
    seed of ``seeds``: its fixed vertex that endpoint's checkpoint at ``start_epoch`` (in train.save_epochs, or
    train.epochs: the final network), ``free`` free vertices trained ``epochs`` epochs with the volume
    regulariser ``volume_weight``; ``samples`` interior points measured (and ESPRO's members); ``triangle``: the
    endpoint seeds whose final networks span the contrast, a simplex of fixed vertices only."""

    seeds: tuple[int, ...]
    start_epoch: int
    free: int
    epochs: int
    lr: float
    volume_weight: float
    batch_size: int
    momentum: float
    wd: float
    samples: int
    triangle: tuple[int, ...]
    eval_batch_size: int
    bn_samples: int
    train_samples: int
    seed: int
    start_files: tuple[str, ...] = ()  # optional: checkpoints of your own as fixed vertices (simplex r: the r-th)
    # (start_epoch: their pretraining epochs, counted in the budget)

    def __post_init__(self):
        require(len(self.seeds) >= 1, "simplex.seeds must list at least one endpoint seed")
        require(
            len(set(self.start_files)) == len(self.start_files),
            f"simplex.start_files names a file twice: {list(self.start_files)}",
        )
        require(len(set(self.seeds)) == len(self.seeds), f"simplex.seeds has a seed twice: {list(self.seeds)}")
        require(self.start_epoch >= 1, f"simplex.start_epoch must be at least 1, got {self.start_epoch}")
        require(self.free >= 1, f"simplex.free must be at least 1 (a free vertex to train), got {self.free}")
        require(self.epochs >= 1, f"simplex.epochs must be at least 1, got {self.epochs}")
        require(self.volume_weight >= 0, f"simplex.volume_weight must be non-negative, got {self.volume_weight}")
        check_sgd("simplex", self)
        require(self.samples >= 1, f"simplex.samples must be at least 1 (interior points measured), got {self.samples}")
        require(
            len(self.triangle) >= 2 and len(set(self.triangle)) == len(self.triangle),
            f"simplex.triangle must name two or more different endpoint seeds, got {list(self.triangle)}",
        )
        require(self.eval_batch_size >= 1, f"simplex.eval_batch_size must be at least 1, got {self.eval_batch_size}")
        for key in ("bn_samples", "train_samples"):
            n = getattr(self, key)
            require(n >= 0, f"simplex.{key} must be 0 (all) or positive, got {n}")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "curve": CurveConfig,
    "eval": EvalConfig,
    "fge": FgeConfig,
    "sse": SseConfig,
    "compare": CompareConfig,
    "plane": PlaneConfig,
    "plane_points": PlanePointsConfig,
    "path_ensembles": PathEnsemblesConfig,
    "barriers": BarriersConfig,
    "curvature": CurvatureConfig,
    "simplex": SimplexConfig,
}


@dataclasses.dataclass(frozen=True)
class SubsetConfig:
    """``subset``: how many training and test images the width experiment uses (0 = all), drawn from ``seed``."""

    train_size: int
    test_size: int
    seed: int = 0

    def __post_init__(self):
        require(self.train_size >= 0, f"subset.train_size must be 0 (all) or positive, got {self.train_size}")
        require(self.test_size >= 0, f"subset.test_size must be 0 (all) or positive, got {self.test_size}")


@dataclasses.dataclass(frozen=True)
class WidthConfig:
    """``width``: the factors K, the model and its base arguments, and which arguments K multiplies."""

    ks: tuple[int, ...]
    model: str
    args: dict
    scale: tuple[str, ...]

    def __post_init__(self):
        require(len(self.ks) >= 2, f"width.ks must list at least two width factors, got {list(self.ks)}")
        require(all(k >= 1 for k in self.ks), f"width.ks must be positive integers, got {list(self.ks)}")
        require(len(set(self.ks)) == len(self.ks), f"width.ks has a factor twice: {list(self.ks)}")
        require(self.model in MODELS, f"width.model {self.model!r} is not a known model")
        for key in self.scale:
            require(
                isinstance(self.args.get(key), int) and not isinstance(self.args.get(key), bool),
                f"width.scale names {key!r}, which must be an integer argument in width.args (got "
                f"{self.args.get(key)!r})",
            )


@dataclasses.dataclass(frozen=True)
class InstabilityConfig:
    """``instability``: Frankle et al. 2020's instability analysis (modeconn.instability): the steps k (iterations)
    where the parent of each seed splits into two children, the run they share (the endpoints' schedule) and the
    segment measured between the children (``num_points`` α; BN recalibrated on ``bn_samples`` training images, the
    train error on ``train_samples``; 0 = all)."""

    ks: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    wd: float
    num_points: int
    eval_batch_size: int
    bn_samples: int
    train_samples: int

    def __post_init__(self):
        require(len(self.ks) >= 1, "instability.ks must list at least one step k")
        require(all(k >= 0 for k in self.ks), f"instability.ks must be iterations >= 0, got {list(self.ks)}")
        require(len(set(self.ks)) == len(self.ks), f"instability.ks has a step twice: {list(self.ks)}")
        require(len(self.seeds) >= 1, "instability.seeds must list at least one parent seed")
        require(len(set(self.seeds)) == len(self.seeds), f"instability.seeds has a seed twice: {list(self.seeds)}")
        require(self.epochs >= 1, f"instability.epochs must be at least 1, got {self.epochs}")
        check_sgd("instability", self)
        require(self.num_points >= 2, f"instability.num_points must be at least 2 (both ends), got {self.num_points}")
        require(
            self.eval_batch_size >= 1, f"instability.eval_batch_size must be at least 1, got {self.eval_batch_size}"
        )
        require(self.bn_samples >= 0, f"instability.bn_samples must be 0 (all) or positive, got {self.bn_samples}")
        require(
            self.train_samples >= 0, f"instability.train_samples must be 0 (all) or positive, got {self.train_samples}"
        )


# Sections of the experiments' own params files (experiments/width/params.yaml, stages.width;
# experiments/instability/params.yaml, stages.instability).
OTHER_SECTIONS: dict[str, type] = {"subset": SubsetConfig, "width": WidthConfig, "instability": InstabilityConfig}
KNOWN_SECTIONS = (*SECTIONS, *OTHER_SECTIONS)


def read_sections(path: Path, *names: str) -> tuple:
    """The sections ``names`` of the params file at ``path``, each validated into its dataclass (errors name
    ``path``)."""
    params = read_params(path)
    return tuple(section(params, name, {**SECTIONS, **OTHER_SECTIONS}[name], path) for name in names)
