"""A tiny generator and its served scorer on a synthetic catalogue: RL tests without a run."""

from __future__ import annotations

import numpy as np
import torch

from sgrec_ray.generator.item_scores import incidence
from sgrec_ray.generator.model import build_model
from sgrec_ray.rl.policy import ServedScorer
from sgrec_ray.sid.trie import SidTrie, SidVocab
from tests.generator.gen_synthetic import make_item_tokens

LEVELS = [4, 4, 4]  # 64 items: a catalogue the top-G is a small part of


def tiny_policy(
    n_items: int = 64,
    weight: float = 0.5,
    beam_width: int = 8,
    layout: str = "token",
    seed: int = 0,
) -> tuple[torch.nn.Module, ServedScorer]:
    """(a randomly initialised tiny generator in eval mode, its scorer at ``weight``)."""
    tokens = make_item_tokens(n_items, LEVELS, seed=seed)
    vocab = 3 + sum(LEVELS)
    model = build_model("tiny", vocab, seed=seed, layout=layout, depth=tokens.shape[1]).eval()
    scorer = ServedScorer(
        item_tokens=tokens,
        trie=SidTrie.from_tokens(tokens, SidVocab(LEVELS)),
        token_map=np.arange(vocab, dtype=np.int64),
        items_matrix=incidence(torch.as_tensor(tokens), vocab),
        weight=weight,
        beam_width=beam_width,
    )
    return model, scorer
