"""The popularity baseline: every user gets the most frequent training targets.

Counted on the same split the generator trained on (training targets only), so the two rows of the
report see exactly the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def item_counts(train: pa.Table, n_items: int) -> np.ndarray:
    """How often each item is a training target (positions >= loss_from of SEQUENCES rows)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for items, start in zip(
        train.column("items").to_pylist(), train.column("loss_from").to_pylist(), strict=True
    ):
        np.add.at(counts, np.asarray(items[start:], dtype=np.int64), 1)
    return counts


def popularity_ranking(counts: np.ndarray) -> np.ndarray:
    """Items by descending count; ties broken by item index (stable) so the baseline is deterministic."""
    return np.argsort(-counts, kind="stable")


def recommend_popular(
    order: np.ndarray, k: int, exclude: Sequence[set[int]] | None, n_users: int
) -> list[list[int]]:
    """Top-k popular items per user, skipping each user's excluded (seen) items when given."""
    if exclude is None:
        top = order[:k].tolist()
        return [list(top) for _ in range(n_users)]
    out = []
    for seen in exclude:
        picks: list[int] = []
        for item in order:
            if int(item) not in seen:
                picks.append(int(item))
                if len(picks) == k:
                    break
        out.append(picks)
    return out
