"""Constrained beam search: validity, exact log-probs, brute-force agreement, exclusion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.generator.decode import (
    Recommender,
    constrained_beam_search,
    item_log_probs,
)
from sgrec_ray.generator.model import GeneratorMeta, load_generator, save_generator
from sgrec_ray.sid.trie import SidTrie, SidVocab
from tests.generator.conftest import HISTORIES
from tests.generator.gen_synthetic import make_item_tokens, sid_vocab_json, vocab_size

N_ITEMS = 20


def brute_force(model, history, item_tokens, k, exclude=frozenset()):
    scores = item_log_probs(model, history, list(range(len(item_tokens))), item_tokens)
    order = [i for i in np.argsort(-scores, kind="stable") if i not in exclude]
    return [(int(i), float(scores[i])) for i in order[:k]], scores


def test_trie_tables(item_tokens):
    trie = SidTrie.from_tokens(item_tokens, SidVocab.infer(item_tokens))
    assert trie.depth == 3 and trie.n_items == N_ITEMS
    # Walking each item's tokens through the child tables reaches that item.
    for i, row in enumerate(item_tokens):
        node = 0
        for d, tok in enumerate(row):
            node = trie.child[d][node, tok - trie.lo[d]]
            assert node >= 0
        assert node == i
    with pytest.raises(ValueError, match="not unique"):
        SidTrie.from_tokens(np.vstack([item_tokens, item_tokens[:1]]), SidVocab.infer(item_tokens))


def test_wide_beam_equals_brute_force(model, item_tokens):
    """With beam >= n_items nothing is pruned, so beam search is exact top-k over the catalogue."""
    found = constrained_beam_search(model, HISTORIES, item_tokens, beam_width=N_ITEMS, k=8)
    for history, got in zip(HISTORIES, found, strict=True):
        want, _ = brute_force(model, history, item_tokens, 8)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(
    beam=st.integers(1, 8),
    k=st.integers(1, 8),
    batch_size=st.integers(1, 4),
    seed=st.integers(0, 3),
)
def test_outputs_valid_distinct_sorted_and_exact(model, beam, k, batch_size, seed):
    item_tokens = make_item_tokens(N_ITEMS, seed=seed)
    found = constrained_beam_search(
        model, HISTORIES, item_tokens, beam_width=beam, k=k, batch_size=batch_size
    )
    for history, got in zip(HISTORIES, found, strict=True):
        items = [i for i, _ in got]
        scores = [s for _, s in got]
        assert all(0 <= i < N_ITEMS for i in items)
        assert len(set(items)) == len(items)
        assert len(items) <= k
        if beam >= k:  # beam_width >= k guarantees k items (the catalogue has more)
            assert len(items) == k
        assert scores == sorted(scores, reverse=True)
        true = item_log_probs(model, history, items, item_tokens)
        np.testing.assert_allclose(scores, true, rtol=1e-4, atol=1e-4)


def test_exclusion_returns_k_unseen_items(model, item_tokens):
    _, scores = brute_force(model, [1, 2], item_tokens, N_ITEMS)
    best = [int(i) for i in np.argsort(-scores)]
    exclude = [set(best[:15]), set(), set(range(N_ITEMS)) - {7}]
    found = constrained_beam_search(
        model, [[1, 2]] * 3, item_tokens, beam_width=5, k=5, exclude=exclude
    )
    # The 15 best items are gone; the narrow beam still returns the 5 remaining, in order.
    assert [i for i, _ in found[0]] == best[15:]
    assert len(found[1]) == 5 and found[1][0][0] == best[0]
    assert [i for i, _ in found[2]] == [7]  # only one allowed item: fewer than k, never invalid


@settings(max_examples=10, deadline=None)
@given(n_excluded=st.integers(0, N_ITEMS), beam=st.integers(1, 6), seed=st.integers(0, 100))
def test_exclusion_guarantees_min_k_available(model, n_excluded, beam, seed):
    item_tokens = make_item_tokens(N_ITEMS, seed=seed % 4)
    rng = np.random.default_rng(seed)
    excluded = set(rng.choice(N_ITEMS, size=n_excluded, replace=False).tolist())
    k = beam
    (got,) = constrained_beam_search(
        model, [[3, 4]], item_tokens, beam_width=beam, k=k, exclude=[excluded]
    )
    assert not excluded & {i for i, _ in got}
    assert len(got) == min(k, N_ITEMS - n_excluded)


def test_recommender_loads_checkpoint_and_truncates_history(tmp_path, model, item_tokens):
    meta = GeneratorMeta(
        size="tiny",
        sid_vocab_size=vocab_size(),
        model_vocab_size=vocab_size(),
        depth=3,
        n_items=N_ITEMS,
        max_history=2,
    )
    save_generator(model, str(tmp_path / "m"), meta, item_tokens, sid_vocab_json())
    rec = Recommender.load(str(tmp_path / "m"), beam_width=4)
    assert rec.n_items == N_ITEMS and rec.max_history == 2
    long, short = rec.recommend([[9, 8, 1, 2], [1, 2]], k=3)
    assert long == short  # only the last max_history items count
    assert len(long) == 3
    # k > beam_width widens the beam rather than returning fewer than k.
    assert len(rec.recommend([[1]], k=6)[0]) == 6


def test_pretrained_token_map_decodes(tmp_path, item_tokens):
    """A model whose ids differ from ours (pretrained base) decodes through token_map."""
    from sgrec_ray.generator.model import load_pretrained
    from tests.generator.test_model import make_pretrained_base

    base = make_pretrained_base(tmp_path / "base")
    m, tok, token_map = load_pretrained(base, [4, 3, 2])
    m.eval()
    hist = [[1, 2], [7]]
    got = constrained_beam_search(
        m, hist, item_tokens, beam_width=N_ITEMS, k=4, token_map=token_map
    )
    for h, g in zip(hist, got, strict=True):
        true = item_log_probs(m, h, [i for i, _ in g], item_tokens, token_map=token_map)
        np.testing.assert_allclose([s for _, s in g], true, rtol=1e-4, atol=1e-4)
        assert len({i for i, _ in g}) == 4
    meta = GeneratorMeta(
        "tiny", vocab_size(), len(tok), 3, N_ITEMS, 5, base, token_map=token_map.tolist()
    )
    save_generator(m, str(tmp_path / "ckpt"), meta, item_tokens, sid_vocab_json(), tok)
    gen = load_generator(str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(gen.token_map, token_map)
    assert Recommender(gen, beam_width=N_ITEMS).recommend(hist, k=4) == got
