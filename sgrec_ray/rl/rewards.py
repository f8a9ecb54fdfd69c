"""Business rewards, pluggable by name (TRL-style: a reward is a plain function).

Signature: ``reward(items, targets, env) -> float64 [B, G]`` where

    items:   int64 [B, G]  the G rollouts of each of B users, in the policy's rank order (best first)
    targets: int64 [B]     each user's true next item
    env:     RewardEnv      what a reward may need beyond the rollouts (a trained ranker, item values)

Adding a reward = one function + one line in ``BUSINESS_REWARDS`` + one test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from sgrec_ray.config import Config, RlSection
from sgrec_ray.config_rules import broken

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
    weights: Mapping[str, float] = field(default_factory=dict)  # composite: rl.composite_weights
    # [B] the items that earn the rule reward's hit (rl.positives_k: the true next item and the
    # user's following training items); None = the true next item alone.
    positives: Sequence[Sequence[int]] | None = None


RewardFn = Callable[[IntArray, IntArray, RewardEnv], FloatArray]


def rank_penalties(group_size: int) -> FloatArray:
    """MiniOneRec's penalty of a wrong item at rank j: −(1/log2(j+2)) / Σ_{k<G} 1/log2(k+2)."""
    discounts = 1.0 / np.log2(np.arange(group_size) + 2.0)
    return -discounts / discounts.sum()


def positive_mask(items: IntArray, targets: IntArray, env: RewardEnv) -> NDArray[np.bool_]:
    """bool [B, G]: which rollouts are positives (``env.positives``, else the true next item)."""
    items = np.asarray(items, dtype=np.int64)
    if env.positives is None:
        return np.asarray(items == np.asarray(targets, dtype=np.int64)[:, None])
    return np.asarray(
        [np.isin(row, list(pos)) for row, pos in zip(items, env.positives, strict=True)]
    )


def rule_reward(items: IntArray, targets: IntArray, env: RewardEnv) -> FloatArray:
    """1 for a positive (the true next item, or any of ``env.positives``); in a group that holds
    one, wrong items get the rank penalty.

    A group without a positive is all zeros: constant, so it carries no business signal (its
    business advantage is 0). On sparse data that can be most groups — the report counts them;
    ``rl.add_target`` puts the true item in every group.
    """
    items = np.asarray(items, dtype=np.int64)
    hit = positive_mask(items, targets, env)
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


def composite_reward(items: IntArray, targets: IntArray, env: RewardEnv) -> FloatArray:
    """Σ w_name · reward_name over ``env.weights`` (``rl.composite_weights``), raw, not normalised.

    With the default {rule: 1, sasrec: 1}: in a group holding the true item the rule reward (1 for
    it, rank penalties down to about −0.3 for the others) dominates, since SASRec's probabilities
    over the catalogue are small; in a group without it the rule term is constant and SASRec's
    p(item | history) orders the rollouts, so far fewer groups are left with no business signal.
    """
    if not env.weights:
        raise ValueError("rl.business_reward=composite needs rl.composite_weights (name: weight)")
    total = np.zeros(np.shape(items), dtype=np.float64)
    for name, weight in env.weights.items():
        if weight:
            total += weight * np.asarray(get_business_reward(name)(items, targets, env), np.float64)
    return total


BUSINESS_REWARDS: dict[str, RewardFn] = {
    "rule": rule_reward,
    "ranker": ranker_reward,
    "sasrec": sasrec_reward,
    "composite": composite_reward,
}
# The trained model each reward reads from RewardEnv (and the stage that makes it).
REWARD_MODELS = {"ranker": "ranker", "sasrec": "sasrec"}


def composite_problems(cfg: Config) -> list[str]:
    """``rl.composite_weights`` may weight every business reward but the composite itself. Read
    from :data:`BUSINESS_REWARDS`, so a new reward is allowed without a second list; checked by
    the a2po stage's check (the config layer knows no reward), worded like a config rule."""
    parts = sorted(set(BUSINESS_REWARDS) - {"composite"})
    rule = (
        ("rl.composite_weights",),
        lambda c: set(c.rl.composite_weights) <= set(parts),
        f"weights only for the other business rewards ({', '.join(parts)})",
    )
    return broken(cfg, [rule])


def uses_judge(rl: RlSection) -> bool:
    """Whether a run calls the PSJ: grpo ignores semantics, so it never pays for the judge."""
    return rl.semantic_rate > 0 and rl.advantage != "grpo"


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


def reward_models(name: str, weights: Mapping[str, float]) -> set[str]:
    """The models (``ranker``, ``sasrec``) reward ``name`` needs; the composite's weighted parts'."""
    parts = [n for n, w in weights.items() if w] if name == "composite" else [name]
    return {REWARD_MODELS[n] for n in parts if n in REWARD_MODELS}


def computable_rewards(env: RewardEnv) -> list[str]:
    """Every business reward the models in ``env`` allow (rule always; composite when its parts)."""
    have = {m for m, v in (("ranker", env.ranker), ("sasrec", env.sasrec)) if v is not None}
    names = [n for n in BUSINESS_REWARDS if n != "composite" and reward_models(n, {}) <= have]
    if env.weights and reward_models("composite", env.weights) <= have:
        names.append("composite")
    return names


def constant_groups_by_reward(
    items: IntArray,
    targets: IntArray,
    env: RewardEnv,
    known: Mapping[str, FloatArray] | None = None,
    tol: float = 1e-9,
) -> dict[str, tuple[int, int]]:
    """Per computable reward, (groups it would leave constant, groups with a finite reward).

    A constant group gets no A2PO update.

    One set of rollouts, every reward: the report can then say which reward leaves the policy
    something to learn from on the same data. ``known``: rewards already computed (the training
    reward), reused instead of recomputed. Groups with a non-finite reward are left out of both
    counts (the A2PO loop counts them as ``nan_groups``), as in :func:`constant_group_share`.
    """
    out: dict[str, tuple[int, int]] = {}
    for name in computable_rewards(env):
        r = known.get(name) if known else None
        if r is None:
            r = get_business_reward(name)(items, targets, env)
        r = np.asarray(r, dtype=np.float64)
        finite = r[np.isfinite(r).all(axis=1)]
        out[name] = (round(constant_group_share(finite, tol) * len(finite)), len(finite))
    return out
