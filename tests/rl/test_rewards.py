"""Business rewards: MiniOneRec's rule reward by hand, the ranker reward's contract, the registry."""

from __future__ import annotations

import numpy as np
import pytest

from sgrec_ray.rl.rewards import (
    BUSINESS_REWARDS,
    RewardEnv,
    computable_rewards,
    constant_group_share,
    constant_groups_by_reward,
    get_business_reward,
    rank_penalties,
    reward_models,
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
    with pytest.raises(ValueError, match=r"\['composite', 'ranker', 'rule', 'sasrec'\]"):
        get_business_reward("ecpm")


class _SasRec:
    """p(item | history) = item / 100: distinct within any group of distinct items."""

    def predict(self, histories, items):
        return np.asarray(items, dtype=np.float64) / 100


def test_composite_is_the_weighted_sum_of_its_parts():
    items = np.array([[5, 7, 9], [1, 2, 3]])
    targets = np.array([7, 4])
    env = RewardEnv(histories=[[1], [2]], sasrec=_SasRec(), weights={"rule": 1.0, "sasrec": 2.0})
    got = BUSINESS_REWARDS["composite"](items, targets, env)
    want = rule_reward(items, targets, env) + 2.0 * items / 100
    assert got == pytest.approx(want)
    # The rule leaves the second group constant; the composite does not.
    assert constant_group_share(rule_reward(items, targets, env)) == 0.5
    assert constant_group_share(got) == 0.0
    zero = RewardEnv(histories=[[1], [2]], weights={"rule": 1.0, "sasrec": 0.0})  # no model needed
    assert BUSINESS_REWARDS["composite"](items, targets, zero) == pytest.approx(
        rule_reward(items, targets, zero)
    )
    with pytest.raises(ValueError, match=r"rl\.composite_weights"):
        BUSINESS_REWARDS["composite"](items, targets, RewardEnv())
    with pytest.raises(ValueError, match="--stages sasrec"):  # a weighted part without its model
        BUSINESS_REWARDS["composite"](items, targets, RewardEnv(weights={"sasrec": 1.0}))


def test_models_each_reward_needs():
    assert reward_models("rule", {}) == set()
    assert reward_models("ranker", {"sasrec": 1.0}) == {"ranker"}
    assert reward_models("composite", {"rule": 1.0, "sasrec": 1.0, "ranker": 0.0}) == {"sasrec"}
    assert computable_rewards(RewardEnv()) == ["rule"]
    env = RewardEnv(sasrec=_SasRec(), weights={"rule": 1.0, "sasrec": 1.0})
    assert computable_rewards(env) == ["rule", "sasrec", "composite"]
    env = RewardEnv(sasrec=_SasRec(), weights={"ranker": 1.0})  # its ranker is not loaded
    assert computable_rewards(env) == ["rule", "sasrec"]


def test_constant_groups_by_reward_on_the_same_rollouts():
    items = np.array([[5, 7, 9], [1, 2, 3], [4, 4, 4]])
    targets = np.array([7, 8, 8])
    env = RewardEnv(histories=[[1]] * 3, sasrec=_SasRec(), weights={"rule": 1.0, "sasrec": 1.0})
    got = constant_groups_by_reward(items, targets, env)
    # rule: groups 2 and 3 lack the target; sasrec: only group 3 (one item thrice) is flat.
    assert got == {"rule": (2, 3), "sasrec": (1, 3), "composite": (1, 3)}
    # A reward already computed is reused, and non-finite groups count in neither number.
    known = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = constant_groups_by_reward(items, targets, env, known={"sasrec": known})
    assert got["sasrec"] == (1, 2)


def test_step_records_carry_the_share_per_reward():
    from sgrec_ray.rl.a2po import summarize
    from sgrec_ray.rl.telemetry import SUM_KEYS, by_reward_sums, step_record

    sums = dict.fromkeys(SUM_KEYS, 0.0) | {"groups": 4.0, "rollouts": 16.0, "updates": 1.0}
    sums |= by_reward_sums({"rule": (3, 4), "sasrec": (0, 4)})
    record = step_record(1, sums, {"step_s": 1.0}, {})
    assert record["constant_share_by_reward"] == {"rule": 0.75, "sasrec": 0.0}  # ranker: not run
    second = step_record(2, sums | by_reward_sums({"rule": (1, 4)}), {"step_s": 1.0}, {})
    assert summarize([record, second], 1.0)["mean_constant_share_by_reward"] == {
        "rule": 0.5,
        "sasrec": 0.0,
    }
