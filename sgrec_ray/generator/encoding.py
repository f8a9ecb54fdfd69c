"""Turning item sequences into token tensors: pure functions shared by SFT, decoding and RL.

A history of items is ``[BOS] + tokens(item_1) + … + tokens(item_n)`` (``depth`` SID tokens per
item). A training row (``items``, ``loss_from``) is encoded as one sequence whose labels supervise
only the tokens of items at positions ``>= loss_from``; one forward pass therefore gives the loss of
every next-item target in the window, each conditioned on the items before it (SASRec-style: every
earlier position is a target, at the cost of one sequence).

All ids here are our SID-vocabulary ids; ``token_map`` (see ``model.py``) converts them to model ids
at the model boundary, so a pretrained base with a different vocabulary uses the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sgrec_ray.generator.model import BOS, PAD

IGNORE = -100  # the label value Hugging Face's causal-LM loss skips


def history_tokens(items: Sequence[int], item_tokens: np.ndarray) -> np.ndarray:
    """int64 [1 + len(items) * depth]: ``[BOS]`` then each item's SID tokens, oldest first."""
    idx = np.asarray(items, dtype=np.int64)
    body = item_tokens[idx].reshape(-1) if len(idx) else np.zeros(0, dtype=np.int64)
    return np.concatenate([[BOS], body]).astype(np.int64)


def training_example(
    items: Sequence[int], loss_from: int, item_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) of one training row; labels are ``IGNORE`` outside supervised items.

    Labels are aligned with inputs (not shifted): the HF loss shifts them, so the label at the
    position of item j's first token is predicted from BOS and items < j.
    """
    ids = history_tokens(items, item_tokens)
    labels = np.full_like(ids, IGNORE)
    start = 1 + max(int(loss_from), 0) * item_tokens.shape[1]
    labels[start:] = ids[start:]
    return ids, labels


def item_labels(items: Sequence[int], loss_from: int, depth: int) -> np.ndarray:
    """int64 [1 + len(items) * depth], aligned with :func:`training_example`'s ids: the item_idx of
    supervised item j at position ``j * depth`` (the position whose output predicts item j's first
    token, from BOS and items < j), ``IGNORE`` elsewhere. Targets of the item-level loss."""
    out = np.full(1 + len(items) * depth, IGNORE, dtype=np.int64)
    start = max(int(loss_from), 0)
    out[np.arange(start, len(items)) * depth] = np.asarray(items, dtype=np.int64)[start:]
    return out


def split_windows(
    items: Sequence[int], loss_from: int, max_items: int, stride: int
) -> list[tuple[list[int], int]]:
    """Cut a row longer than ``max_items`` into windows of at most ``max_items`` items.

    Windows start every ``stride`` items and the last one ends at the row's end. Each window
    supervises only targets the previous window did not, so every target counts exactly once.
    The data stage already writes windows of ``max_history + 1`` items, which pass through unchanged;
    this keeps SFT correct for rows from other sources (e.g. one row per user).
    """
    items = list(items)
    n = len(items)
    if n <= max_items:
        return [(items, int(loss_from))]
    stride = max(1, min(stride, max_items - 1))
    starts = list(range(0, n - max_items + 1, stride))
    if starts[-1] != n - max_items:
        starts.append(n - max_items)
    out, covered = [], int(loss_from)  # targets before `covered` are done
    for start in starts:
        end = start + max_items
        if end <= covered:
            continue
        out.append((items[start:end], max(covered, start) - start))
        covered = end
    return out


def collate(
    examples: Sequence[tuple[np.ndarray, ...]], token_map: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels[, item_labels]) examples into a batch with an attention mask.

    Returns ``input_ids``, ``labels``, ``attention_mask`` (and ``item_labels`` when the examples
    carry them): int64 [B, T_max]. Pads are PAD (mapped through ``token_map``) with label
    ``IGNORE`` and mask 0.
    """
    t_max = max(len(ex[0]) for ex in examples)
    ids = np.full((len(examples), t_max), PAD, dtype=np.int64)
    labels = np.full((len(examples), t_max), IGNORE, dtype=np.int64)
    mask = np.zeros((len(examples), t_max), dtype=np.int64)
    with_items = len(examples[0]) > 2
    items = np.full((len(examples), t_max), IGNORE, dtype=np.int64) if with_items else None
    for row, (x, y, *rest) in enumerate(examples):
        ids[row, : len(x)] = x
        labels[row, : len(y)] = y
        mask[row, : len(x)] = 1
        if items is not None:
            items[row, : len(rest[0])] = rest[0]
    if token_map is not None:
        ids = token_map[ids]
        supervised = labels != IGNORE
        labels[supervised] = token_map[labels[supervised]]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
    }
    if items is not None:
        batch["item_labels"] = torch.from_numpy(items)
    return batch


def left_pad(
    seqs: Sequence[np.ndarray], token_map: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token sequences for generation: (input_ids, attention_mask, position_ids).

    Left padding puts every sequence's last token in the last column, so one forward gives each
    row's next-token logits at ``[:, -1]`` and cached decoding appends columns for all rows at once.
    Position ids count real tokens only, so padding does not shift positions.
    """
    t_max = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t_max), PAD, dtype=np.int64)
    mask = np.zeros((len(seqs), t_max), dtype=np.int64)
    for row, s in enumerate(seqs):
        if len(s):
            ids[row, t_max - len(s) :] = s
            mask[row, t_max - len(s) :] = 1
    if token_map is not None:
        ids = token_map[ids]
    mask_t = torch.from_numpy(mask)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    return torch.from_numpy(ids), mask_t, positions
