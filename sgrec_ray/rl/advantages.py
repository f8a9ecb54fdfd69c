"""Group advantages for policy optimisation: GRPO and the S-GRec fusions, selected by name.

All functions take one group at a time, a group being the G rollouts sampled for one user:

    rewards_biz: float64 [G]   business reward of each rollout (always present)
    rewards_sem: float64 [G] | None   semantic (judge) reward; None when the group was not judged

and return the advantage of each rollout, float64 [G]. They are pure numpy so they can be tested in
isolation (tests/rl/test_advantages.py holds the paper's properties as hypothesis tests) and used
unchanged by the Ray Train loop.

A2PO (S-GRec, eq. for the fused advantage): business and semantic rewards are normalised separately
within the group, then A = A_biz + λ·A_sem with
λ = 1[sign(A_biz) = sign(A_sem)] · min(|A_biz|, |A_sem|) / (max(|A_biz|, |A_sem|) + ε), so that
|λ·A_sem| ≤ |A_biz|: business anchors the update and semantics only reinforces agreeing directions.
A consequence worth knowing: a group with constant business reward has A_biz = 0 and gets no update.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
AdvantageFn = Callable[[Array, Array | None], Array]

EPS = 1e-6


def group_normalize(rewards: Array, eps: float = EPS) -> Array:
    """(r - mean) / (std + eps) within the group; all zeros for a constant group (no signal)."""
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std()
    if not np.isfinite(std) or std < eps:
        return np.zeros_like(r)
    return (r - r.mean()) / (std + eps)


def agreement_gate(a_biz: Array, a_sem: Array, eps: float = EPS) -> Array:
    """λ per rollout: same sign → min/max magnitude ratio (≤ 1), disagreement or a zero → 0."""
    same_sign = np.sign(a_biz) == np.sign(a_sem)
    ratio = np.minimum(np.abs(a_biz), np.abs(a_sem)) / (
        np.maximum(np.abs(a_biz), np.abs(a_sem)) + eps
    )
    return np.where(same_sign & (a_biz != 0), ratio, 0.0)


def grpo(rewards_biz: Array, rewards_sem: Array | None = None) -> Array:
    """Business only: the MiniOneRec baseline."""
    return group_normalize(rewards_biz)


def reward_sum(rewards_biz: Array, rewards_sem: Array | None = None) -> Array:
    """Add the raw rewards, then normalise (the paper's unstable ablation: scales fight)."""
    if rewards_sem is None:
        return group_normalize(rewards_biz)
    return group_normalize(np.asarray(rewards_biz) + np.asarray(rewards_sem))


def adv_sum(rewards_biz: Array, rewards_sem: Array | None = None) -> Array:
    """Normalise separately, add without a gate (semantics can override business)."""
    a_biz = group_normalize(rewards_biz)
    if rewards_sem is None:
        return a_biz
    return a_biz + group_normalize(rewards_sem)


def a2po(rewards_biz: Array, rewards_sem: Array | None = None) -> Array:
    """Asymmetric fusion: A_biz + λ·A_sem with the agreement gate λ (module docstring)."""
    a_biz = group_normalize(rewards_biz)
    if rewards_sem is None:
        return a_biz
    a_sem = group_normalize(rewards_sem)
    return a_biz + agreement_gate(a_biz, a_sem) * a_sem


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo,
    "reward_sum": reward_sum,
    "adv_sum": adv_sum,
    "a2po": a2po,
}


def get_advantage(name: str) -> AdvantageFn:
    """The advantage function registered under ``name``; the error lists the registered names."""
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage {name!r}; choose one of {sorted(ADVANTAGES)}"
        ) from None
