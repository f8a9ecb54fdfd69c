"""The lean Llama forward (generator.lean) against the Hugging Face forward it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.generator.decode import constrained_beam_search
from sgrec_ray.generator.encoding import history_tokens, left_pad
from sgrec_ray.generator.item_scores import incidence
from sgrec_ray.generator.lean import lean_view
from sgrec_ray.generator.model import build_model
from tests.generator.gen_synthetic import make_item_tokens, vocab_size

N_ITEMS = 60
LEVELS = [6, 5, 4]  # 120 SIDs, 60 of them items: a trie with dead branches


@pytest.fixture(scope="module")
def llama():
    """A tiny random token-layout generator with sharp logits (so beams compete)."""
    m = build_model("tiny", vocab_size(LEVELS), seed=1).eval()
    with torch.no_grad():
        m.get_input_embeddings().weight.mul_(20)
    return m


def _histories(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    # Different lengths in one batch (left padding), an empty history, repeats.
    return [rng.integers(0, N_ITEMS, size=int(rng.integers(0, 12))).tolist() for _ in range(n)]


def test_prompt_logits_match_hugging_face(llama):
    item_tokens = make_item_tokens(N_ITEMS, LEVELS)
    seqs = [history_tokens(h, item_tokens) for h in _histories(8, 0)]
    ids, mask, pos = left_pad(seqs)
    with torch.inference_mode():
        want = llama(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        got = lean_view(llama).prompt(ids, mask, pos)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rerank_weight", [0.0, 0.5])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_beam_search_is_the_same_on_both_paths(llama, rerank_weight, batch_size):
    """Same items in the same order, scores to float rounding: with padding, exclusion, re-rank."""
    item_tokens = make_item_tokens(N_ITEMS, LEVELS)
    histories = _histories(20, 2)
    exclude = [set(h) for h in histories]
    items = incidence(torch.as_tensor(item_tokens), vocab_size(LEVELS))
    found = {
        lean: constrained_beam_search(
            llama,
            histories,
            item_tokens,
            beam_width=6,
            k=5,
            exclude=exclude,
            batch_size=batch_size,
            rerank_weight=rerank_weight,
            items=items,
            lean=lean,
        )
        for lean in (True, False)
    }
    for fast, ref in zip(found[True], found[False], strict=True):
        assert [i for i, _ in fast] == [i for i, _ in ref]
        np.testing.assert_allclose([s for _, s in fast], [s for _, s in ref], atol=1e-4)


def test_lean_view_declines_what_it_does_not_cover(llama):
    assert lean_view(llama) is not None
    item = build_model("tiny", vocab_size(LEVELS), seed=0, layout="item", depth=3).eval()
    assert lean_view(item) is None  # the item layout has its own (already cheap) steps
    llama.train()
    try:
        assert lean_view(llama) is None  # training mode: dropout hooks must run
    finally:
        llama.eval()
