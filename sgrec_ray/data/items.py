"""Item catalogue helpers shared by stages that read item attributes (genres today)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def genre_matrix(items: pa.Table) -> np.ndarray:
    """bool [n_items, n_genres]: row item_idx marks the item's genres ("Action, Comedy" → 2 marks).

    Genres are split on commas and stripped, so "Action,Comedy" reads the same; an item without a
    genres value (or a table without the column) gets an all-False row.
    """
    idx = items.column("item_idx").to_pylist()
    raw = (
        items.column("genres").to_pylist() if "genres" in items.column_names else [None] * len(idx)
    )
    sets = [{g.strip() for g in (text or "").split(",")} - {""} for text in raw]
    vocab = {g: k for k, g in enumerate(sorted(set().union(*sets)))}
    out = np.zeros((max(idx, default=-1) + 1, len(vocab)), dtype=bool)
    for i, genres in zip(idx, sets, strict=True):
        out[i, [vocab[g] for g in genres]] = True
    return out
