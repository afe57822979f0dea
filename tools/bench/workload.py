"""The data and networks of params.yaml as the pipeline would prepare and build them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from modeconn.bn import has_bn
from modeconn.data import DATASETS, DatasetInfo, Prepared, prepare
from modeconn.errors import ConfigError
from modeconn.models import create_model, from_spec
from stages.kit.config import DataConfig, ModelConfig


def load_data(data: DataConfig, dataset: str | None = None, augment: str | None = None) -> tuple[Prepared, str]:
    """The dataset (train and test, no validation split) as ``prepare`` makes it, and its source."""
    name = dataset or data.name
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    with tempfile.TemporaryDirectory(prefix="modeconn-bench-") as tmp:
        prepared = prepare(
            name,
            Path(data.raw_dir),
            Path(tmp) / "prepared",
            augment=augment or data.augment,
            download=data.download,
            synthetic_kwargs=data.synthetic if name == "synthetic" else None,
        )
        source = json.loads((Path(tmp) / "prepared" / "meta.json").read_text())["source"]
    return prepared, source


def build(model: ModelConfig, info: DatasetInfo, **overrides: Any) -> nn.Module:
    spec = model.spec(info)
    return from_spec({**spec, "args": {**spec["args"], **overrides}})


def build_bn(model_cfg: ModelConfig, info: DatasetInfo) -> tuple[nn.Module, str]:
    """The model with BatchNorm (itself, or with batch_norm=True), else ConvFC with BatchNorm."""
    name = model_cfg.name
    model = build(model_cfg, info)
    if has_bn(model):
        return model, name
    try:
        return build(model_cfg, info, batch_norm=True), f"{name}, batch_norm=True"
    except ConfigError:  # the model has no BatchNorm variant
        model = create_model(
            "convfc", info.num_classes, in_channels=info.channels, input_size=info.size, batch_norm=True
        )
        return model, "convfc (default size), batch_norm=True"
