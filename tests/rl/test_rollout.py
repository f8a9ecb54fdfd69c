"""Rollouts are distinct valid items with exact log-probs; group fusion counts degenerate groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.generator.decode import constrained_beam_search, item_log_probs
from sgrec_ray.generator.model import build_model
from sgrec_ray.rl.a2po import prompt_indices
from sgrec_ray.rl.advantages import get_advantage
from sgrec_ray.rl.groups import fuse_batch
from sgrec_ray.rl.rollout import policy_log_probs
from sgrec_ray.sid.trie import SidTrie, SidVocab
from tests.generator.gen_synthetic import make_item_tokens

HISTORIES = [[0, 1, 2], [5], [], [7, 3, 9, 11, 2, 20]]


@pytest.fixture(scope="module", params=["token", "item"])
def setup(request):
    tokens = make_item_tokens(24)
    trie = SidTrie.from_tokens(tokens, SidVocab.infer(tokens))
    model = build_model(
        "tiny", int(tokens.max()) + 1, seed=0, layout=request.param, depth=tokens.shape[1]
    ).eval()
    return model, tokens, trie


def test_policy_log_probs_match_teacher_forcing_per_user(setup):
    model, tokens, trie = setup
    items = np.asarray(
        [
            [i for i, _ in row]
            for row in constrained_beam_search(model, HISTORIES, tokens, 5, 5, trie=trie)
        ]
    )
    batched = policy_log_probs(model, HISTORIES, torch.as_tensor(items), tokens)
    assert batched.requires_grad
    for b, hist in enumerate(HISTORIES):
        ref = item_log_probs(model, hist, items[b].tolist(), tokens)
        assert np.allclose(batched[b].detach().numpy(), ref, atol=1e-4)


def test_prompt_indices_are_disjoint_across_ranks_and_reproducible():
    a = prompt_indices(50, step=3, per_step=8, seed=1, rank=0, world=2)
    b = prompt_indices(50, step=3, per_step=8, seed=1, rank=1, world=2)
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert np.array_equal(a, prompt_indices(50, step=3, per_step=8, seed=1, rank=0, world=2))
    assert not np.array_equal(a, prompt_indices(50, step=4, per_step=8, seed=1, rank=0, world=2))


def test_fuse_batch_handles_and_counts_degenerate_groups():
    biz = np.array(
        [
            [1.0, 0.0, 0.5, 0.2],  # normal, judged
            [0.3, 0.3, 0.3, 0.3],  # constant business
            [0.1, np.nan, 0.2, 0.3],  # NaN business reward
            [0.9, 0.1, 0.4, 0.2],  # judged, judge failed on one item
        ]
    )
    sem = np.full_like(biz, np.nan)
    sem[0] = [2.0, 1.0, 1.5, 3.0]
    sem[3] = [1.0, np.nan, 2.0, 3.0]
    judged = np.array([True, False, False, True])
    adv, stats = fuse_batch(get_advantage("a2po"), biz, sem, judged)
    assert np.isfinite(adv).all()
    assert stats.groups == 4 and stats.nan_groups == 1 and stats.constant_biz_groups == 1
    assert stats.judged_groups == 1 and stats.judge_failed_groups == 1
    assert stats.zero_adv_groups == 2  # constant + NaN
    assert np.array_equal(adv[1], np.zeros(4)) and np.array_equal(adv[2], np.zeros(4))
    grpo = get_advantage("grpo")
    assert np.allclose(adv[3], grpo(biz[3], None))  # failed judge → business only
    assert stats.judged_rollouts == 4 and 0 <= stats.lam_sum <= 4
    assert stats.constant_biz_share == pytest.approx(1 / 4)


def test_one_row_per_user_scores_equal_one_row_per_item():
    """The tree forward (history once, every item after it under a 4-D mask) gives the plain
    per-item teacher forcing's logits."""
    from sgrec_ray.rl.rollout import _per_item, teacher_forced

    tokens = make_item_tokens(24)
    model = build_model("tiny", int(tokens.max()) + 1, seed=0).eval()
    items = torch.as_tensor(np.random.default_rng(0).permutation(24)[:20].reshape(4, 5))
    tree, tree_ids = teacher_forced(model, HISTORIES, items, tokens)
    plain, plain_ids = _per_item(model, HISTORIES, items, tokens, None)
    assert torch.equal(tree_ids, plain_ids)
    assert torch.allclose(tree, plain, atol=1e-4)
