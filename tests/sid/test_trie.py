"""SID vocabulary layout and the prefix trie (sparse and dense forms)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.sid.trie import BOS, EOS, PAD, SidTrie, SidVocab


def test_vocab_layout_is_the_documented_contract():
    vocab = SidVocab([4, 5, 2])
    assert (PAD, BOS, EOS) == (0, 1, 2)
    assert vocab.vocab_size == 3 + 4 + 5 + 2
    assert [vocab.offset(lv) for lv in range(3)] == [3, 7, 12]
    assert vocab.token(1, 3) == 3 + 4 + 3
    assert vocab.item_tokens([3, 4, 1]) == [6, 11, 13]
    assert vocab.decode(11) == (1, 4)
    assert vocab.sid_string([12, 3, 0]) == "<a_12><b_3><c_0>"
    with pytest.raises(ValueError):
        vocab.token(0, 4)
    with pytest.raises(ValueError):
        vocab.decode(EOS)
    with pytest.raises(ValueError):
        vocab.item_tokens([0, 0])
    assert SidVocab.from_json(vocab.to_json()) == vocab


@st.composite
def unique_codes(draw):
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    rows = draw(
        st.lists(
            st.tuples(*[st.integers(0, s - 1) for s in sizes]), min_size=1, max_size=60, unique=True
        )
    )
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(sizes)), sizes


@settings(max_examples=60, deadline=None)
@given(unique_codes())
def test_trie_reaches_every_item_and_allows_only_valid_tokens(data):
    codes, sizes = data
    vocab = SidVocab(sizes)
    trie = SidTrie(codes, vocab)
    tokens = trie.item_token_matrix()
    assert tokens.shape == codes.shape and tokens.dtype == np.int64
    valid = {tuple(r) for r in tokens.tolist()}
    for i, row in enumerate(tokens.tolist()):
        assert row == vocab.item_tokens(codes[i])
        assert trie.item_of(tuple(row)) == i  # item → tokens → item
        pid = np.array([0])
        for d in range(trie.depth):
            allowed = trie.allowed(tuple(row[:d]))
            assert row[d] in allowed  # reachable by walking allowed()
            # Only tokens of this level's block, each leading to at least one real item.
            lo, hi = vocab.offset(d), vocab.offset(d) + sizes[d]
            assert ((allowed >= lo) & (allowed < hi)).all()
            assert all(any(v[: d + 1] == (*row[:d], t) for v in valid) for t in allowed.tolist())
            # Dense form agrees with the sparse one.
            mask = trie.allowed_mask(d, pid)[0]
            np.testing.assert_array_equal(np.flatnonzero(mask), allowed)
            pid = trie.step(d, pid, np.array([row[d]]))
            assert pid[0] >= 0
        assert pid[0] == i  # after the last level the dense id is the item_idx
    assert len(trie.allowed(tuple(tokens[0]))) == 0  # a complete SID has no continuation


def test_invalid_prefixes_and_tokens():
    codes = np.array([[0, 0], [0, 1], [2, 0]])
    vocab = SidVocab([3, 2])
    trie = SidTrie(codes, vocab)
    assert trie.allowed(()).tolist() == [3, 5]  # code 1 at level 0 leads nowhere
    assert len(trie.allowed((4,))) == 0
    assert trie.n_prefixes(0) == 1 and trie.n_prefixes(1) == 2 and trie.n_prefixes(2) == 3
    # Wrong level's token, or a code no item has: -1.
    assert trie.step(0, np.array([0, 0, 0]), np.array([4, 6, 0])).tolist() == [-1, -1, -1]
    with pytest.raises(KeyError):
        trie.item_of((5, 7))


def test_trie_rejects_duplicates_and_out_of_range():
    with pytest.raises(ValueError, match="unique"):
        SidTrie(np.array([[0, 1], [0, 1]]), SidVocab([2, 2]))
    with pytest.raises(ValueError, match="range"):
        SidTrie(np.array([[0, 2]]), SidVocab([2, 2]))
    with pytest.raises(ValueError):
        SidTrie(np.array([[0, 1]]), SidVocab([2, 2, 2]))


def test_dense_tables_scale_to_a_large_catalogue():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 64, size=(12_000, 3))
    from sgrec_ray.sid.rqkmeans import resolve_collisions

    codes, report = resolve_collisions(base)
    trie = SidTrie(codes, SidVocab([64, 64, 64, report.max_group_size]))
    # Batched greedy walk over all items at once recovers every item_idx.
    tokens = trie.item_token_matrix()
    pid = np.zeros(len(codes), dtype=np.int64)
    for d in range(trie.depth):
        pid = trie.step(d, pid, tokens[:, d])
    np.testing.assert_array_equal(pid, np.arange(len(codes)))
