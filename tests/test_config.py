"""params.yaml sections: types, unknown and missing keys, ranges — each error names the key."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from modeconn.errors import ConfigError
from stages.kit import config
from stages.kit.config import CompareConfig, CurveConfig, EvalConfig, FgeConfig, SseConfig, TrainConfig, section

from .stage_utils import ROOT, tiny_params

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
        section({"compare": {"budgets": [0], "ensemble": "probs"}}, "compare", CompareConfig)
    with pytest.raises(ConfigError, match="train.save_epochs"):
        section(tiny_params(train__save_epochs=[99]), "train", TrainConfig)
    with pytest.raises(ConfigError, match="sse.cycles"):
        section(tiny_params(sse__cycles=0), "sse", SseConfig)
    with pytest.raises(ConfigError, match="too long"):
        section(tiny_params(fge__cycle=8, fge__epochs=2), "fge", FgeConfig)
    assert section(tiny_params(fge__cycle=0.25), "fge", FgeConfig).cycle == 0.25


# ------------------------------------------------------------------ every key required; the file named

# The keys a params file may leave out, each meaning "not used" when absent (the README lists them).
OPTIONAL = {
    "data": ("synthetic", "imagefolder"),
    "model": ("args", "weights"),
    "curve": ("endpoint_files",),
    "fge": ("start_files",),
    "barriers": ("files",),
    "simplex": ("start_files",),
}
REQUIRED = [
    (name, f.name)
    for name, cls in config.SECTIONS.items()
    for f in config.dataclasses.fields(cls)
    if f.name not in OPTIONAL.get(name, ())
]


def test_only_the_documented_keys_are_optional():
    """No setting of the paper is assumed silently: a default in a section's dataclass makes its key optional."""
    got = {name: keys for name, cls in config.SECTIONS.items() if (keys := config.optional_keys(cls))}
    assert got == OPTIONAL
    readme = (ROOT / "README.md").read_text()
    for name, keys in OPTIONAL.items():
        for key in keys:
            assert f"`{name}.{key}`" in readme, f"README does not document the optional key {name}.{key}"


@pytest.mark.parametrize("name, key", REQUIRED, ids=[f"{n}.{k}" for n, k in REQUIRED])
def test_a_missing_key_stops_with_its_name_and_the_file(tmp_path, name, key):
    params = tiny_params()
    del params[name][key]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        config.read_sections(path, name)
    msg = str(info.value)
    assert f"missing key {name}.{key} in {path}" in msg and "params.yaml" not in msg


def test_every_error_names_the_file_it_read(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_params(train__learning_rate=0.1), sort_keys=False))
    with pytest.raises(ConfigError, match=rf"unknown key train.learning_rate in {re.escape(str(path))};"):
        config.read_sections(path, "train")
    path.write_text(yaml.safe_dump({k: v for k, v in tiny_params().items() if k != "sse"}, sort_keys=False))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} has no 'sse' section"):
        config.read_sections(path, "sse")


@pytest.mark.parametrize(
    "name, change, says",
    [
        ("fge", {"fge__cycle": "abc"}, "fge.cycle must be a number, got 'abc'"),  # a type, from _check_type
        ("train", {"train__save_epochs": [9]}, "train.save_epochs: 9 is outside 1..train.epochs"),  # a range
    ],
    ids=["type", "range"],
)
def test_type_and_range_errors_name_the_file_too(tmp_path, name, change, says):
    """As missing and unknown keys do: the user learns which of several params files holds the bad value."""
    source = "own/params.yaml"
    with pytest.raises(ConfigError) as info:
        section(tiny_params(**change), name, SECTIONS[name], source)
    msg = str(info.value)
    assert says in msg and source in msg, msg
    path = tmp_path / "exp.yaml"  # through read_sections, as the stages read it
    path.write_text(yaml.safe_dump(tiny_params(**change), sort_keys=False))
    with pytest.raises(ConfigError) as info:
        config.read_sections(path, name)
    msg = str(info.value)
    assert says in msg and msg.count(str(path)) == 1, msg


def test_an_unknown_section_is_named_with_the_known_ones(tmp_path):
    params = tiny_params()
    params["fgee"] = params.pop("fge")  # a misspelt section, which would otherwise be ignored
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        config.read_sections(path, "train")  # any section: the whole file is checked
    msg = str(info.value)
    assert "unknown section 'fgee'" in msg and str(path) in msg
    assert all(name in msg for name in config.SECTIONS) and "width" in msg


def test_the_projects_params_files_validate(tmp_path, monkeypatch):
    """params.yaml, own/params.yaml (beside an image folder) and the width experiment's files, every section."""
    config.read_sections(ROOT / "params.yaml", *config.SECTIONS)
    width = ROOT / "experiments/width"
    config.read_sections(width / "params.yaml", "data", "train", "curve", "eval")
    for path in sorted((width / "configs").glob("k*.yaml")):
        config.read_sections(path, "model", "train")
    shutil.copy(ROOT / "own/params.yaml", tmp_path / "params.yaml")
    root = yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["imagefolder"]["root"]
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / root / split / c).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config.read_sections(tmp_path / "params.yaml", *config.SECTIONS)
