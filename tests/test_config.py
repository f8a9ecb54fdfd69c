"""Config loading: every YAML in configs/ loads, overrides work, and errors name the key."""

from __future__ import annotations

import pytest

from sgrec_ray.config import ConfigError, config_from_dict, load_config
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_says_how_to_run_it(path):
    cfg = load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# sgrec run configs/") and "ray job submit" in first
    assert cfg.run.name


def test_overrides_are_typed():
    cfg = config_from_dict(
        {}, ["sft.epochs=3", "sft.lr=1e-3", "eval.ks=[1, 10]", "ray.address=null"]
    )
    assert cfg.sft.epochs == 3 and isinstance(cfg.sft.epochs, int)
    assert cfg.sft.lr == pytest.approx(1e-3)
    assert cfg.eval.ks == [1, 10]
    assert cfg.ray.address is None


def test_int_is_accepted_for_float():
    assert config_from_dict({"sft": {"lr": 1}}).sft.lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sft.epoch=3"], "unknown key 'sft.epoch'"),
        (["nope.x=1"], "unknown key 'nope'"),
        (["sft.epochs=three"], "sft.epochs: expected an integer"),
        (["eval.split=train"], "allowed values: ['valid', 'test']"),
        (["data.source=csv"], "allowed values: ['movielens', 'generic', 'minionerec']"),
        (["sft.use_gpu=maybe"], "sft.use_gpu: expected true or false"),
        (["eval.ks=5"], "eval.ks: expected a list"),
        (["sft=3"], "sft: expected a mapping"),
        (["sft.epochs"], "expected key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, overrides)
    assert message in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_section_hash_changes_only_with_its_sections():
    a = config_from_dict({})
    b = config_from_dict({}, ["eval.beam_width=7"])
    assert a.section_hash("sft") == b.section_hash("sft")
    assert a.section_hash("eval") != b.section_hash("eval")
    assert a.section_hash("run_seed") != config_from_dict({}, ["run.seed=1"]).section_hash(
        "run_seed"
    )
