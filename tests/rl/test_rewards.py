"""Business rewards: MiniOneRec's rule reward by hand, the ranker reward's contract, the registry."""

from __future__ import annotations

import numpy as np
import pytest

from sgrec_ray.rl.rewards import (
    BUSINESS_REWARDS,
    RewardEnv,
    constant_group_share,
    get_business_reward,
    rank_penalties,
    rule_reward,
)


def test_rank_penalties_sum_to_minus_one_and_decay():
    p = rank_penalties(16)
    assert p.sum() == pytest.approx(-1.0)
    assert np.all(np.diff(p) > 0)  # a wrong item ranked higher is penalised more


def test_rule_reward_by_hand():
    items = np.array([[5, 7, 9], [1, 2, 3]])
    targets = np.array([7, 4])
    r = rule_reward(items, targets, RewardEnv())
    d = 1 / np.log2(np.arange(3) + 2)
    assert r[0, 1] == 1.0
    assert r[0, 0] == pytest.approx(-d[0] / d.sum())
    assert r[0, 2] == pytest.approx(-d[2] / d.sum())
    assert np.all(r[1] == 0)  # no hit: constant group, no business signal
    assert constant_group_share(r) == 0.5


class _Ranker:
    def predict(self, histories, items):
        return np.full(items.shape, 0.5)


def test_ranker_reward_is_pctr_times_value():
    items = np.array([[0, 1], [2, 0]])
    env = RewardEnv(histories=[[1], [2]], ranker=_Ranker(), item_values=np.array([1.0, 2.0, 4.0]))
    r = BUSINESS_REWARDS["ranker"](items, np.array([0, 0]), env)
    assert r.tolist() == [[0.5, 1.0], [2.0, 0.5]]


def test_ranker_reward_without_a_ranker_says_which_stage_to_run():
    with pytest.raises(ValueError, match="--stages ranker"):
        BUSINESS_REWARDS["ranker"](np.zeros((1, 2), dtype=np.int64), np.zeros(1), RewardEnv())


def test_unknown_reward_lists_the_registry():
    with pytest.raises(ValueError, match=r"\['ranker', 'rule', 'sasrec'\]"):
        get_business_reward("ecpm")
