"""Business rewards, pluggable by name (TRL-style: a reward is a plain function).

Signature: ``reward(items, targets, env) -> float64 [B, G]`` where

    items:   int64 [B, G]  the G rollouts of each of B users, in the policy's rank order (best first)
    targets: int64 [B]     each user's true next item
    env:     RewardEnv      what a reward may need beyond the rollouts (a trained ranker, item values)

Adding a reward = one function + one line in ``BUSINESS_REWARDS`` + one test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


class Ranker(Protocol):
    """A click model: pCTR for (user history, candidate item) pairs."""

    def predict(self, histories: Sequence[Sequence[int]], items: IntArray) -> FloatArray:
        """histories: B lists of item_idx; items: int64 [B, G] → pCTR float64 [B, G] in [0, 1]."""
        ...


@dataclass
class RewardEnv:
    histories: Sequence[Sequence[int]] = field(default_factory=list)  # [B], oldest first
    ranker: Ranker | None = None
    sasrec: Ranker | None = None  # SASRec's p(item | history) through the same predict() shape
    item_values: FloatArray | None = None  # float64 [n_items] business value; None = 1 for all


RewardFn = Callable[[IntArray, IntArray, RewardEnv], FloatArray]


def rank_penalties(group_size: int) -> FloatArray:
    """MiniOneRec's penalty of a wrong item at rank j: −(1/log2(j+2)) / Σ_{k<G} 1/log2(k+2)."""
    discounts = 1.0 / np.log2(np.arange(group_size) + 2.0)
    return -discounts / discounts.sum()


def rule_reward(items: IntArray, targets: IntArray, env: RewardEnv) -> FloatArray:
    """1 for the true next item; in a group that contains it, wrong items get the rank penalty.

    A group without the true item is all zeros: constant, so it carries no business signal
    (its business advantage is 0). On sparse data that can be most groups — the report counts them.
    """
    items = np.asarray(items, dtype=np.int64)
    hit = items == np.asarray(targets, dtype=np.int64)[:, None]
    penalties = np.broadcast_to(rank_penalties(items.shape[1]), items.shape)
    has_hit = hit.any(axis=1, keepdims=True)
    return np.where(hit, 1.0, np.where(has_hit, penalties, 0.0))


def ranker_reward(items: IntArray, targets: IntArray, env: RewardEnv) -> FloatArray:
    """Dense eCPM-style reward: pCTR(user, item) × value(item), from a ranker trained on the logs."""
    if env.ranker is None:
        raise ValueError(
            "rl.business_reward=ranker needs a trained ranker: run the 'ranker' stage first "
            "(sgrec run CONFIG --stages ranker)"
        )
    items = np.asarray(items, dtype=np.int64)
    pctr = np.asarray(env.ranker.predict(env.histories, items), dtype=np.float64)
    value = 1.0 if env.item_values is None else np.asarray(env.item_values)[items]
    return pctr * value


def sasrec_reward(items: IntArray, targets: IntArray, env: RewardEnv) -> FloatArray:
    """Dense collaborative reward (MiniOneRec's CF reward): SASRec's p(item | history) over the
    full catalogue, from the sasrec stage trained on the same interactions."""
    if env.sasrec is None:
        raise ValueError(
            "rl.business_reward=sasrec needs the sasrec stage's model: run it first "
            "(sgrec run CONFIG --stages sasrec)"
        )
    items = np.asarray(items, dtype=np.int64)
    return np.asarray(env.sasrec.predict(env.histories, items), dtype=np.float64)


BUSINESS_REWARDS: dict[str, RewardFn] = {
    "rule": rule_reward,
    "ranker": ranker_reward,
    "sasrec": sasrec_reward,
}


def get_business_reward(name: str) -> RewardFn:
    try:
        return BUSINESS_REWARDS[name]
    except KeyError:
        raise ValueError(
            f"unknown business reward {name!r}; choose one of {sorted(BUSINESS_REWARDS)}"
        ) from None


def constant_group_share(rewards: FloatArray, tol: float = 1e-9) -> float:
    """Share of groups (rows) whose reward is constant: under A2PO they get no update at all."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size == 0:
        return 0.0
    return float(np.mean(np.ptp(rewards, axis=1) <= tol))
