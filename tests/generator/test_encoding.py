"""Sequence encoding: token layout, label masking, windowing, padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.generator.encoding import (
    IGNORE,
    collate,
    history_tokens,
    left_pad,
    split_windows,
    training_example,
)
from sgrec_ray.generator.model import BOS, PAD

ITEM_TOKENS = np.array([[3, 7, 10], [4, 8, 11], [5, 9, 10]], dtype=np.int64)


def test_history_tokens_layout():
    assert history_tokens([2, 0], ITEM_TOKENS).tolist() == [BOS, 5, 9, 10, 3, 7, 10]
    assert history_tokens([], ITEM_TOKENS).tolist() == [BOS]


def test_training_example_supervises_only_items_from_loss_from():
    ids, labels = training_example([0, 1, 2], 2, ITEM_TOKENS)
    assert ids.tolist() == [BOS, 3, 7, 10, 4, 8, 11, 5, 9, 10]
    assert labels.tolist() == [IGNORE] * 7 + [5, 9, 10]
    _, labels = training_example([0, 1, 2], 1, ITEM_TOKENS)
    assert (labels != IGNORE).sum() == 6  # items 1 and 2, every earlier position a target


def test_collate_right_pads_with_mask_and_maps_tokens():
    a = training_example([0, 1], 1, ITEM_TOKENS)
    b = training_example([2], 0, ITEM_TOKENS)
    batch = collate([a, b])
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][1, 4:].tolist() == [PAD] * 3
    assert batch["labels"][1, 4:].tolist() == [IGNORE] * 3
    shifted = collate([a, b], token_map=np.arange(12) + 100)
    assert shifted["input_ids"][0, 0] == BOS + 100
    assert shifted["labels"][0, -1] == 11 + 100 and shifted["labels"][0, 0] == IGNORE


def test_left_pad_positions_ignore_padding():
    ids, mask, pos = left_pad([np.array([1, 5, 6]), np.array([1])])
    assert ids.tolist() == [[1, 5, 6], [PAD, PAD, 1]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos[:, -1].tolist() == [2, 0]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 60),
    loss_from=st.integers(0, 5),
    max_items=st.integers(2, 12),
    stride=st.integers(1, 15),
)
def test_split_windows_counts_each_target_once(n, loss_from, max_items, stride):
    items = list(range(100, 100 + n))
    windows = split_windows(items, loss_from, max_items, stride)
    targets = []
    for w_items, w_lf in windows:
        assert len(w_items) <= max_items
        assert w_items == items[w_items[0] - 100 : w_items[0] - 100 + len(w_items)]  # contiguous
        targets += w_items[w_lf:]
        if w_items[0] != 100:  # a later window: every target keeps at least one item of context
            assert w_lf >= 1
    assert targets == items[min(loss_from, n) :]


def test_split_windows_passes_short_rows_through():
    assert split_windows([1, 2, 3], 2, 5, 2) == [([1, 2, 3], 2)]


@pytest.mark.parametrize("stride", [1, 3])
def test_split_windows_last_window_ends_at_row_end(stride):
    windows = split_windows(list(range(10)), 1, 4, stride)
    assert windows[-1][0][-1] == 9
