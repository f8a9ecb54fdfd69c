"""The RL policy is the served ranker: same groups, exact log-probs, the normaliser's choice held."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.generator.decode import constrained_beam_search, item_log_probs
from sgrec_ray.generator.item_scores import item_logits
from sgrec_ray.rl.policy import add_targets, group_log_probs
from tests.rl.policy_setup import tiny_policy

HISTORIES = [[0, 1, 2], [5], [], [7, 3, 9, 11, 2, 20]]


@pytest.fixture(scope="module", params=["token", "item"])
def policy(request):
    return tiny_policy(layout=request.param, weight=0.5)


def test_served_rollout_is_the_endpoints_top_g(policy):
    model, scorer = policy
    items = scorer.rollout(model, HISTORIES, 6)
    served = constrained_beam_search(
        model, HISTORIES, scorer.item_tokens, scorer.beam_width, 6, trie=scorer.trie,
        token_map=scorer.token_map, rerank_weight=scorer.weight,
    )  # fmt: skip
    assert items.tolist() == [[i for i, _ in row] for row in served]
    assert all(len(set(row)) == 6 for row in items.tolist())


def test_sampled_groups_are_distinct_draws_from_the_served_pool_in_served_order(policy):
    model, scorer = policy
    pool = scorer.rollout(model, HISTORIES, 24)
    items = scorer.rollout(model, HISTORIES, 6, pool=4, generator=np.random.default_rng(0))
    for row, ranked in zip(items.tolist(), pool.tolist(), strict=True):
        assert len(set(row)) == 6 and set(row) <= set(ranked)
        assert row == sorted(row, key=ranked.index)  # kept in the endpoint's order
    cold = scorer.rollout(model, HISTORIES, 6, pool=4, temperature=1e-6)
    assert cold.tolist() == pool[:, :6].tolist()  # no temperature: the served top-G


def test_scores_are_the_blend_of_exact_sid_and_item_log_probs(policy):
    model, scorer = policy
    items = torch.as_tensor(scorer.rollout(model, HISTORIES, 5))
    s, sid, item = scorer.scores(model, HISTORIES, items)
    assert s.requires_grad
    assert torch.allclose(s, 0.5 * sid + 0.5 * item, atol=1e-6)
    tmap = torch.as_tensor(scorer.token_map)
    for b, hist in enumerate(HISTORIES):
        ref = item_log_probs(model, hist, items[b].tolist(), scorer.item_tokens)
        assert np.allclose(sid[b].detach().numpy(), ref, atol=1e-4)
        ids = torch.as_tensor(np.concatenate([[1], scorer.item_tokens[hist].reshape(-1)]))[None]
        last = model(input_ids=ids).logits[0, -1]
        catalogue = torch.log_softmax(item_logits(last, scorer.items_matrix, tmap), -1)
        assert torch.allclose(item[b], catalogue[items[b]], atol=1e-4)


def test_gradient_reaches_both_the_sid_and_the_item_level_path(policy):
    model, scorer = policy
    items = torch.as_tensor(scorer.rollout(model, HISTORIES, 5))
    _, sid, item = scorer.scores(model, HISTORIES, items)
    for part in (sid, item):
        model.zero_grad()
        part.sum().backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_group_normalised_policy_gradient_equals_the_catalogue_normalised_one():
    """The docstring's claim (rl/policy.py): with zero-sum group advantages the gradient of
    Σ A·log π is the same whether s is normalised over the group or by any per-user constant
    (the catalogue's log-normaliser is one)."""
    torch.manual_seed(0)
    s = torch.randn(3, 5, requires_grad=True)
    adv = torch.randn(3, 5)
    adv = adv - adv.mean(-1, keepdim=True)
    log_z = (s.exp().sum(-1, keepdim=True) * 7.0).log()  # any per-user normaliser of s
    (g_group,) = torch.autograd.grad((adv * group_log_probs(s)).sum(), s)
    (g_catalogue,) = torch.autograd.grad((adv * (s - log_z)).sum(), s)
    assert torch.allclose(g_group, g_catalogue, atol=1e-6)
    assert torch.allclose(group_log_probs(s).logsumexp(-1), torch.zeros(3), atol=1e-6)


def test_add_targets_fills_the_last_slot_only_where_the_target_is_missing():
    items = np.array([[1, 2, 3], [4, 5, 6]])
    out, added = add_targets(items, np.array([2, 9]))
    assert out.tolist() == [[1, 2, 3], [4, 5, 9]] and added == 1
    assert items.tolist() == [[1, 2, 3], [4, 5, 6]]  # the input is left alone
