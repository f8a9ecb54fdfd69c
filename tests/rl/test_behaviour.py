"""RL moves the served ranking towards its reward: outcome tests on a tiny generator.

Each test runs the a2po stage's own step (``draw_groups`` → reward → ``fuse_batch`` →
``update_policy``) in-process and asserts what a user would see change: the served top-G.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from sgrec_ray.config import RlSection
from sgrec_ray.rl.a2po import draw_groups, make_optimizer, update_policy
from sgrec_ray.rl.advantages import get_advantage
from sgrec_ray.rl.groups import fuse_batch
from sgrec_ray.rl.policy import ServedScorer
from sgrec_ray.rl.rollout import RolloutBatch
from tests.rl.policy_setup import tiny_policy

HISTORIES = [[0, 1, 2], [5, 17], [7, 3, 9, 11, 2, 20]]
G = 6
MAX_STEPS = 10  # the stated budget: 10 steps of 3 groups x 6 items at lr 1e-3 (2-3 measured)
RL = RlSection(
    group_size=G, lr=1e-3, lr_schedule="constant", add_target=False, kl_beta=1e-3, semantic_rate=0
)

Reward = Callable[[np.ndarray], np.ndarray]


def _served(model: torch.nn.Module, scorer: ServedScorer) -> np.ndarray:
    return scorer.rollout(model, HISTORIES, G)


def _step(
    model, reference, scorer, optimizer, scheduler, reward: Reward, rl=RL, sem=None
) -> RolloutBatch:
    batch = RolloutBatch(
        user_ids=[str(u) for u in range(len(HISTORIES))],
        histories=HISTORIES,
        targets=torch.zeros(len(HISTORIES), dtype=torch.long),
        items=torch.zeros(0, 0, dtype=torch.long),
    )
    draw_groups(model, reference, scorer, batch, rl, np.random.default_rng(0))
    items = batch.items.numpy()
    r_biz = reward(items)
    r_sem = np.full(items.shape, np.nan) if sem is None else sem(items, r_biz)
    judged = np.isfinite(r_sem).all(axis=1)
    adv, _ = fuse_batch(get_advantage(rl.advantage), r_biz, r_sem, judged)
    batch.advantages = torch.as_tensor(adv).float()
    update_policy(model, optimizer, scheduler, batch, scorer, rl)
    return batch


def _fresh(rl: RlSection = RL):
    model, scorer = tiny_policy(weight=0.5, beam_width=8)
    reference = copy.deepcopy(model).requires_grad_(False)
    optimizer, scheduler = make_optimizer(model, rl, MAX_STEPS)
    return model, reference, scorer, optimizer, scheduler


def _pays_for(fixed: np.ndarray, sign: float = 1.0) -> Reward:
    """A reward of ``sign`` for each user's one fixed item, 0 for anything else."""
    return lambda items: sign * (items == fixed[:, None]).astype(float)


def _steps_until(done: Callable[[np.ndarray], bool], reward: Reward, policy) -> int | None:
    """RL steps until ``done(served top-G)`` holds (its step count), None if not in MAX_STEPS."""
    model, reference, scorer, optimizer, scheduler = policy
    for step in range(1, MAX_STEPS + 1):
        _step(model, reference, scorer, optimizer, scheduler, reward)
        if done(_served(model, scorer)):
            return step
    return None


def test_a_reward_for_one_item_raises_it_to_rank_1_of_the_served_ranking():
    policy = _fresh()
    fixed = _served(policy[0], policy[2])[:, -1]  # per user, the item it ranks last of G
    steps = _steps_until(lambda top: bool((top[:, 0] == fixed).all()), _pays_for(fixed), policy)
    assert steps is not None, f"the rewarded item is not first after {MAX_STEPS} steps"


def test_the_negated_reward_pushes_the_item_out_of_the_top_g():
    policy = _fresh()
    fixed = _served(policy[0], policy[2])[:, 0]  # per user, the item it ranks first
    steps = _steps_until(
        lambda top: not (top == fixed[:, None]).any(), _pays_for(fixed, -1.0), policy
    )
    assert steps is not None, f"the penalised item is still shown after {MAX_STEPS} steps"


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _one_update(advantage: str, reward: Reward, sem) -> list[torch.Tensor]:
    torch.manual_seed(0)
    rl = dataclasses.replace(RL, advantage=advantage)
    model, reference, scorer, optimizer, scheduler = _fresh(rl)
    _step(model, reference, scorer, optimizer, scheduler, reward, rl, sem)
    return _params(model)


def _rank_reward(items: np.ndarray) -> np.ndarray:
    return (items % 7).astype(float)  # any non-constant business reward


@pytest.mark.parametrize("advantage", ["a2po"])
def test_a2po_with_an_always_disagreeing_semantic_reward_makes_exactly_grpos_update(advantage):
    start = _params(_fresh()[0])
    grpo = _one_update("grpo", _rank_reward, None)
    fused = _one_update(advantage, _rank_reward, lambda items, biz: -biz)  # sign always opposite
    assert any(not torch.equal(a, b) for a, b in zip(grpo, start, strict=True))  # it did move
    assert all(torch.equal(a, b) for a, b in zip(grpo, fused, strict=True))
    adv_sum = _one_update("adv_sum", _rank_reward, lambda items, biz: -biz)
    assert any(not torch.equal(a, b) for a, b in zip(grpo, adv_sum, strict=True))  # ungated differs


def test_a_group_with_constant_business_reward_gives_a2po_no_gradient():
    def constant(items: np.ndarray) -> np.ndarray:
        return np.ones(items.shape)

    def informative(items: np.ndarray, biz: np.ndarray) -> np.ndarray:
        return items.astype(float)  # a semantic reward with plenty to say

    start = _params(_fresh()[0])
    after = _one_update("a2po", constant, informative)
    assert all(torch.equal(a, b) for a, b in zip(after, start, strict=True))
    moved = _one_update("adv_sum", constant, informative)  # without the gate, semantics would act
    assert any(not torch.equal(a, b) for a, b in zip(moved, start, strict=True))
