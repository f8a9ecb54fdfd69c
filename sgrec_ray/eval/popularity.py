"""The popularity baseline: every user gets the most frequent training targets.

Counted on the same split the generator trained on (training targets only), so the two rows of the
report see exactly the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage


def window_targets(items: pa.Array | pa.ChunkedArray, loss_from: np.ndarray) -> np.ndarray:
    """int64 item_idx of every training target of SEQUENCES rows (positions >= loss_from), in
    row order; vectorised over the flat item array, no per-row Python."""
    if isinstance(items, pa.ChunkedArray):
        items = items.combine_chunks() if items.num_chunks else pa.array([], pa.list_(pa.int32()))
    lengths = pc.fill_null(pc.list_value_length(items), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(items).to_numpy(zero_copy_only=False).astype(np.int64)
    row_start = np.cumsum(lengths) - lengths
    pos = np.arange(len(flat), dtype=np.int64) - np.repeat(row_start, lengths)
    return flat[pos >= np.repeat(np.asarray(loss_from, dtype=np.int64), lengths)]


def item_counts(train: pa.Table, n_items: int) -> np.ndarray:
    """How often each item is a training target (positions >= loss_from of SEQUENCES rows)."""
    targets = window_targets(train.column("items"), train.column("loss_from").to_numpy())
    return _count(targets, n_items)


def _count(targets: np.ndarray, n_items: int) -> np.ndarray:
    counts = np.bincount(targets, minlength=n_items).astype(np.int64)
    if len(counts) > n_items:
        raise IndexError(f"training target item_idx {len(counts) - 1} >= n_items {n_items}")
    return counts


def item_counts_streamed(train_uri: str, n_items: int, batch_rows: int = 1 << 16) -> np.ndarray:
    """:func:`item_counts` of a SEQUENCES Parquet file or folder, one batch in memory at a time."""
    counts = np.zeros(n_items, dtype=np.int64)
    for batch in storage.iter_batches(train_uri, ["items", "loss_from"], batch_rows):
        targets = window_targets(batch.column("items"), batch.column("loss_from").to_numpy())
        counts += _count(targets, n_items)
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
