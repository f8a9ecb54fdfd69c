"""The judge-engine registry: every engine answers the protocol, callers ask it (not its name)."""

from __future__ import annotations

import pytest

from sgrec_ray.config import ConfigError, JudgeSection, config_from_dict
from sgrec_ray.judge.checks import check_engine, require_in_process
from sgrec_ray.judge.engines import JudgeSetupError, make_engine, model_id
from sgrec_ray.judge.registry import JUDGE_ENGINES, JudgeEngine, judge_engine


class BatchOnly:
    """A stand-in engine that only runs as a batch processor (registered by one test)."""

    name = "batch-only"
    language_model = True
    in_process = False
    rules = ()


@pytest.mark.parametrize("name", sorted(JUDGE_ENGINES))
def test_every_registered_engine_answers_the_protocol(name):
    engine = judge_engine(name)
    assert isinstance(engine, JudgeEngine) and engine.name == name
    assert isinstance(engine.language_model, bool) and isinstance(engine.in_process, bool)
    for keys, holds, text in engine.rules:  # shaped as config_rules.CROSS_RULES
        assert keys[0] == "judge.engine" and callable(holds) and text
    cfg = JudgeSection(engine=name, model="/models/judge")  # a folder every engine accepts
    assert model_id(cfg) == engine.model_id(cfg)
    assert isinstance(engine.scoring(cfg), str)


def test_an_unknown_engine_fails_the_check_naming_the_registered_ones():
    cfg = config_from_dict({}, ["judge.engine=sglang"])  # the config layer knows no engine
    with pytest.raises(ConfigError, match=r"judge\.engine: 'sglang' is not allowed") as err:
        check_engine(cfg)
    assert str(sorted(JUDGE_ENGINES)) in str(err.value)
    assert judge_engine("transformers") is judge_engine("transformers")  # made once


def test_callers_follow_what_the_engine_says_not_its_name(monkeypatch):
    """A new engine registered under a new name (the one line) is refused in-process or given a
    language model purely from its answers."""
    monkeypatch.setitem(JUDGE_ENGINES, "batch-only", f"{__name__}:BatchOnly")
    cfg = JudgeSection(engine="batch-only")
    with pytest.raises(JudgeSetupError, match=r"judge\.engine=batch-only only runs as"):
        require_in_process(cfg, "the reward service")
    with pytest.raises(JudgeSetupError, match="batch processor"):
        make_engine(cfg)
    check_engine(config_from_dict({}, ["judge.engine=batch-only"]))  # known by registration alone
