"""The generator's item-level score: definition, loss targets, re-ranked decoding, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.generator.decode import constrained_beam_search, item_log_probs
from sgrec_ray.generator.encoding import IGNORE, collate, item_labels, training_example
from sgrec_ray.generator.item_scores import blend, incidence, item_logits, item_loss
from sgrec_ray.generator.validate import ndcg_by_weight, validation_rankings
from sgrec_ray.metrics import ndcg, target_ranks
from sgrec_ray.sid.trie import SidTrie, SidVocab
from tests.generator.conftest import HISTORIES
from tests.generator.gen_synthetic import vocab_size


def _last_logits(model, history, item_tokens):
    from sgrec_ray.generator.encoding import history_tokens

    ids = torch.from_numpy(history_tokens(history, item_tokens))[None]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].float()


def test_item_logits_is_the_sum_of_the_items_token_logits(item_tokens):
    logits = torch.randn(3, vocab_size())
    tmap = torch.arange(vocab_size())
    got = item_logits(logits, incidence(torch.from_numpy(item_tokens), vocab_size()), tmap)
    want = torch.stack([logits[:, row].sum(-1) for row in torch.from_numpy(item_tokens)], -1)
    torch.testing.assert_close(got, want)
    # A pretrained base: model ids differ from ours; only the mapped columns are read.
    shift = torch.arange(vocab_size()) + 7
    wide = torch.zeros(3, vocab_size() + 7)
    wide[:, 7:] = logits
    items = incidence(torch.from_numpy(item_tokens), vocab_size())
    torch.testing.assert_close(item_logits(wide, items, shift), want)


def test_item_labels_sit_where_the_items_first_token_is_predicted(item_tokens):
    items, loss_from, depth = [4, 9, 2], 1, item_tokens.shape[1]
    ids, labels = training_example(items, loss_from, item_tokens)
    got = item_labels(items, loss_from, depth)
    assert got.shape == ids.shape
    assert np.flatnonzero(got != IGNORE).tolist() == [1 * depth, 2 * depth]
    assert got[[depth, 2 * depth]].tolist() == [9, 2]
    # The position after each labelled one holds that item's first token (the token label).
    for pos in np.flatnonzero(got != IGNORE):
        assert labels[pos + 1] == item_tokens[got[pos], 0]
    batch = collate([(ids, labels, got), (ids[:4], labels[:4], got[:4])])
    assert batch["item_labels"].shape == batch["input_ids"].shape
    assert (batch["item_labels"][1, 4:] == IGNORE).all()


def test_item_loss_is_the_catalogue_cross_entropy(item_tokens):
    torch.manual_seed(0)
    logits = torch.randn(2, 7, vocab_size(), requires_grad=True)
    labels = torch.full((2, 7), IGNORE)
    labels[0, 3], labels[1, 0] = 5, 17
    items, tmap = incidence(torch.from_numpy(item_tokens), vocab_size()), torch.arange(vocab_size())
    loss = item_loss(logits, labels, items, tmap)
    scores = item_logits(logits[[0, 1], [3, 0]], items, tmap)
    want = -torch.log_softmax(scores, -1)[[0, 1], [5, 17]].mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 1].abs().sum() == 0  # unlabelled: no grad
    assert float(item_loss(logits, torch.full((2, 7), IGNORE), items, tmap).detach()) == 0.0


def test_blend_keeps_invalid_items_out_even_at_full_weight():
    sid = torch.tensor([-1.0, float("-inf"), -3.0])
    item = torch.tensor([-2.0, -0.1, -0.5])
    assert blend(sid, item, 0.0) is sid
    out = blend(sid, item, 1.0)
    assert out[1] == float("-inf") and out[0] == -2.0 and out[2] == -0.5
    torch.testing.assert_close(blend(sid, item, 0.25)[[0, 2]], torch.tensor([-1.25, -2.375]))


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_reranked_search_orders_the_beams_leaves_by_the_blend(model, item_tokens, weight):
    """With a beam wide enough to keep every item, re-ranked search = brute-force blend ranking."""
    n = len(item_tokens)
    found = constrained_beam_search(
        model, HISTORIES, item_tokens, beam_width=n, k=6, rerank_weight=weight
    )
    items = incidence(torch.from_numpy(item_tokens), vocab_size())
    for history, got in zip(HISTORIES, found, strict=True):
        sid = torch.from_numpy(item_log_probs(model, history, list(range(n)), item_tokens)).float()
        logits = _last_logits(model, history, item_tokens)
        item = torch.log_softmax(item_logits(logits, items, torch.arange(vocab_size())), -1)
        want = torch.argsort(blend(sid, item, weight), descending=True, stable=True)[:6]
        assert [i for i, _ in got] == want.tolist()
    plain = constrained_beam_search(model, HISTORIES, item_tokens, beam_width=n, k=6)
    assert plain != found  # the weight changes the order for these sharp random logits


def test_validation_scores_every_weight_like_the_search_would(model, item_tokens):
    """Like the endpoint (``Recommender.recommend``), validation widens a beam narrower than k."""
    trie = SidTrie.from_tokens(item_tokens, SidVocab.infer(item_tokens))
    targets = [4, 0, 11, 19, 3]
    tmap = np.arange(vocab_size())
    rankings = validation_rankings(
        model, HISTORIES, item_tokens, trie, tmap, beam_width=6, weights=[0.0, 0.5]
    )
    got = ndcg_by_weight(rankings, targets)
    for w, value in got.items():
        found = constrained_beam_search(
            model, HISTORIES, item_tokens, beam_width=10, k=10, rerank_weight=w, trie=trie
        )
        ranked = [[i for i, _ in r] for r in found]
        assert value == pytest.approx(ndcg(target_ranks(ranked, targets), 10), abs=1e-9)
