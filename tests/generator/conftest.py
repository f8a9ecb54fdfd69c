"""Fixtures for generator tests; helpers live in gen_synthetic.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.generator.model import build_model
from tests.generator.gen_synthetic import make_item_tokens, vocab_size

# Histories for decoding tests: ordinary, empty, repeated items, one item, the first item.
HISTORIES = [[1, 2, 3], [], [5, 5, 6, 7, 8, 9, 10], [19], [0, 11]]


@pytest.fixture
def item_tokens() -> np.ndarray:
    return make_item_tokens(20)


@pytest.fixture(scope="module", params=["token", "item"])
def model(request):
    """A tiny random model of each layout with sharper-than-default logits, so beams compete."""
    depth = make_item_tokens(20).shape[1]
    m = build_model("tiny", vocab_size(), seed=0, layout=request.param, depth=depth).eval()
    with torch.no_grad():
        m.get_input_embeddings().weight.mul_(20)
    return m
