"""Config ranges and cross-key rules: impossible values fail at load time, naming key, value and
range; every numeric field of every section has a rule (a new key without one fails here)."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sgrec_ray.config import Config, ConfigError, config_from_dict, load_config
from sgrec_ray.config_rules import CROSS_RULES, RANGES, Range, numeric_fields
from sgrec_ray.judge import checks as judge_checks
from sgrec_ray.rl import a2po
from tests.conftest import REPO


def test_every_numeric_field_of_every_section_has_a_range():
    fields = set(numeric_fields(Config))
    missing = sorted(fields - set(RANGES))
    assert not missing, f"add a line per key to sgrec_ray.config_rules.RANGES: {missing}"
    stale = sorted(set(RANGES) - fields)
    assert not stale, f"RANGES names keys the config no longer has: {stale}"
    assert len(fields) > 100  # the walk found the sections' fields, not nothing


def test_cross_rules_name_real_keys():
    # Any key, numeric or not: a rule may tie a number to a choice (judge.engine, rl.business_reward).
    fields = {
        f"{section}.{name}"
        for section, cls in typing.get_type_hints(Config).items()
        if dataclasses.is_dataclass(cls)
        for name in typing.get_type_hints(cls)
    }
    assert set(numeric_fields(Config)) < fields
    for keys, _, _ in CROSS_RULES:
        assert set(keys) <= fields, keys


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rl.semantic_rate=1.5", "rl.semantic_rate: 1.5 is outside the allowed range [0, 1]"),
        ("rl.group_size=-3", "rl.group_size: -3 is outside the allowed range [2, inf)"),
        ("serve.k_max=0", "serve.k_max: 0 is outside the allowed range [1, inf)"),
        ("sid.codes=0", "sid.codes: 0 is outside the allowed range [2, inf)"),
        ("judge.scale=0", "judge.scale: 0 is outside the allowed range [2, 9]"),
        ("sft.lr=0", "sft.lr: 0.0 is outside the allowed range (0, inf)"),
        (
            "align.heldout_fraction=1",
            "align.heldout_fraction: 1.0 is outside the allowed range (0, 1)",
        ),
        ("eval.ks=[1, 0]", "eval.ks: 0 is outside the allowed range [1, inf)"),
        ("sft.lr=.nan", "sft.lr: nan is outside the allowed range"),
        ("serve.port=70000", "serve.port: 70000 is outside the allowed range [1, 65535]"),
        ("rl.composite_weights={rule: -1}", "rl.composite_weights: -1.0 is outside the allowed"),
    ],
)
def test_out_of_range_values_fail_at_load_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError, match=r"tiny\.yaml: ") as err:
        load_config(REPO / "configs" / "tiny.yaml", [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["serve.k_default=20", "serve.k_max=10"], "must satisfy k_default <= k_max"),
        (["serve.min_replicas=3", "serve.max_replicas=2"], "min_replicas <= max_replicas"),
        (["serve.max_history=50", "serve.max_request_history=10"], "max_history <= max_request"),
        (["align.micro_batch=16", "align.batch_size=8"], "micro_batch <= batch_size"),
        (
            ["aggregate.negative_max_rating=4", "aggregate.positive_min_rating=4"],
            "negative_max_rating < positive_min_rating",
        ),
        (["data.split_ratios=[0.5, 0.5]"], "data.split_ratios=[0.5, 0.5]: must satisfy three"),
        (
            ["rl.business_reward=composite", "rl.composite_weights={rule: 0}"],
            "a weight above zero with business_reward composite",
        ),
    ],
)
def test_cross_key_rules_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({}, overrides)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, ["rl.semantic_rate=2", "sid.codes=1"])
    assert "rl.semantic_rate" in str(err.value) and "sid.codes" in str(err.value)


def test_defaults_and_bounds_themselves_are_allowed():
    config_from_dict({})  # the code's defaults
    config_from_dict({}, ["rl.semantic_rate=0", "rl.semantic_rate=1", "serve.port=65535"])
    config_from_dict({}, ["sft.max_failures=-1", "data.max_users=null"])  # -1: Ray retries forever


@given(
    lo=st.integers(-5, 5),
    width=st.integers(0, 5),
    value=st.floats(-20, 20, allow_nan=False),
    lo_open=st.booleans(),
    hi_open=st.booleans(),
)
def test_range_membership_matches_its_printed_interval(lo, width, value, lo_open, hi_open):
    r = Range(lo, lo + width, lo_open, hi_open)
    above = value > lo if lo_open else value >= lo
    below = value < lo + width if hi_open else value <= lo + width
    assert (value in r) == (above and below)
    assert str(r)[0] == ("(" if lo_open else "[") and str(r)[-1] == (")" if hi_open else "]")


def test_a_components_rules_fail_in_its_own_check():
    """Rules of a registered component (a business reward, a judge engine) are not the config
    layer's: the config loads, and the stage check that uses the component refuses it, worded
    like a config rule. (The config layer sits below the packages that register components.)"""
    cfg = config_from_dict({}, ["rl.composite_weights={rule: 1, click: 2}"])
    with pytest.raises(ConfigError, match=r"weights only for the other business rewards \(ranker"):
        a2po.check(cfg)
    cfg = config_from_dict({}, ["judge.engine=embedding", "judge.aspects=[context]"])
    with pytest.raises(ConfigError, match="no 'context' aspect with engine embedding"):
        judge_checks.check(cfg)
