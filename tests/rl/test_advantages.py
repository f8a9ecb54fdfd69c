"""The paper's properties of the fused advantage, as hypothesis tests over random groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sgrec_ray.rl.advantages import (
    ADVANTAGES,
    EPS,
    a2po,
    adv_sum,
    agreement_gate,
    get_advantage,
    group_normalize,
    grpo,
    reward_sum,
)

finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)
groups = st.integers(min_value=2, max_value=16).flatmap(
    lambda g: st.tuples(
        st.lists(finite, min_size=g, max_size=g).map(np.array),
        st.lists(finite, min_size=g, max_size=g).map(np.array),
    )
)


@given(groups)
def test_semantic_part_never_outweighs_business(group):
    biz, sem = group
    a_biz, a_sem = group_normalize(biz), group_normalize(sem)
    lam = agreement_gate(a_biz, a_sem)
    assert np.all(np.abs(lam * a_sem) <= np.abs(a_biz) + 1e-9)
    assert np.all((lam >= 0) & (lam <= 1))


@given(groups)
def test_gate_is_zero_on_disagreement(group):
    biz, sem = group
    a_biz, a_sem = group_normalize(biz), group_normalize(sem)
    lam = agreement_gate(a_biz, a_sem)
    disagree = np.sign(a_biz) != np.sign(a_sem)
    assert np.all(lam[disagree] == 0)
    # so on those rollouts A2PO is exactly business-only
    assert np.allclose(a2po(biz, sem)[disagree], a_biz[disagree])


@given(groups)
def test_without_semantics_every_fusion_is_grpo(group):
    biz, _ = group
    for fn in ADVANTAGES.values():
        assert np.allclose(fn(biz, None), grpo(biz))


@given(
    groups,
    st.floats(min_value=0.01, max_value=50),
    finite,
    st.floats(min_value=0.01, max_value=50),
    finite,
)
def test_invariant_to_affine_rescaling_of_either_reward(group, a, b, c, d):
    biz, sem = group
    assume(biz.std() > 1e-3 and sem.std() > 1e-3)
    base = a2po(biz, sem)
    # std + EPS in the normaliser: a rescaled group's advantages move by ~EPS / std, so the
    # tolerance is relative to the smallest std a draw can have (hypothesis found std 0.016).
    tol = 1e-4 + 10 * EPS / min(biz.std() * min(a, 1), sem.std() * min(c, 1))
    assert np.allclose(a2po(a * biz + b, sem), base, atol=tol)
    assert np.allclose(a2po(biz, c * sem + d), base, atol=tol)
    assert np.allclose(adv_sum(a * biz + b, c * sem + d), adv_sum(biz, sem), atol=tol)


@given(groups)
def test_constant_business_reward_gives_no_update_under_a2po(group):
    _, sem = group
    biz = np.full_like(sem, 3.0)
    assert np.all(a2po(biz, sem) == 0)
    assert np.all(grpo(biz) == 0)
    # ...while the ungated ablation follows the judge alone
    assert np.allclose(adv_sum(biz, sem), group_normalize(sem))


def test_reward_sum_is_dominated_by_the_larger_scale():
    biz = np.array([1.0, 0.0, 0.0, 0.0])  # the true item is rollout 0
    sem = np.array([0.0, 40.0, 50.0, 60.0])  # judge scores on a larger scale disagree
    assert np.argmax(reward_sum(biz, sem)) == 3  # the raw sum follows the judge
    assert np.argmax(a2po(biz, sem)) == 0  # A2PO keeps the business ranking


def test_hand_computed_a2po():
    biz = np.array([1.0, 0.0])
    sem = np.array([2.0, 0.0])
    # both normalise to [+1, -1] (std 0.5 / 1.0), same sign, equal magnitude → λ ≈ 1 → A ≈ 2·A_biz
    assert np.allclose(a2po(biz, sem), [2.0, -2.0], atol=1e-4)


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match=r"\['a2po', 'adv_sum', 'grpo', 'reward_sum'\]"):
        get_advantage("ppo")
