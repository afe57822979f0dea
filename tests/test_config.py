"""params.yaml sections: types, unknown and missing keys, ranges — each error names the key."""

from __future__ import annotations

import pytest

from modeconn.errors import ConfigError
from stages.config import CompareConfig, CurveConfig, EvalConfig, FgeConfig, SseConfig, TrainConfig, section

from .stage_utils import tiny_params

SECTIONS = {"train": TrainConfig, "curve": CurveConfig, "fge": FgeConfig, "sse": SseConfig}


@pytest.mark.parametrize("name", SECTIONS)
@pytest.mark.parametrize("key, value", [("batch_size", 0), ("momentum", 1.5), ("wd", -1.0)])
def test_sgd_settings_are_checked_in_every_training_section(name, key, value):
    params = tiny_params(**{f"{name}__{key}": value})
    with pytest.raises(ConfigError, match=rf"{name}\.{key}"):
        section(params, name, SECTIONS[name])


def test_types_are_checked_and_numbers_parsed():
    p = tiny_params(train__epochs="ten")
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        section(p, "train", TrainConfig)
    p = tiny_params(train__epochs=True)
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        section(p, "train", TrainConfig)
    p = tiny_params(train__wd="5e-4")  # YAML 1.1 reads 5e-4 as a string
    assert section(p, "train", TrainConfig).wd == pytest.approx(5e-4)
    p = tiny_params(train__seeds=[0, "one"])
    with pytest.raises(ConfigError, match=r"train.seeds\[1\]"):
        section(p, "train", TrainConfig)


def test_sections_missing_unknown_and_ranges():
    with pytest.raises(ConfigError, match="no 'compare' section"):
        section({}, "compare", CompareConfig)
    with pytest.raises(ConfigError, match="unknown key eval.points"):
        section({"eval": {"points": 3}}, "eval", EvalConfig)
    with pytest.raises(ConfigError, match="compare.budgets"):
        section({"compare": {"budgets": [0]}}, "compare", CompareConfig)
    with pytest.raises(ConfigError, match="train.save_epochs"):
        section(tiny_params(train__save_epochs=[99]), "train", TrainConfig)
    with pytest.raises(ConfigError, match="sse.cycles"):
        section(tiny_params(sse__cycles=0), "sse", SseConfig)
    with pytest.raises(ConfigError, match="too long"):
        section(tiny_params(fge__cycle=8, fge__epochs=2), "fge", FgeConfig)
    assert section(tiny_params(fge__cycle=0.25), "fge", FgeConfig).cycle == 0.25
