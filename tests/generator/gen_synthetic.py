"""Synthetic SIDs and training sequences for generator tests (no data or sid stage needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sgrec_ray.data.schema import SEQUENCES

LEVEL_SIZES = [4, 3, 2]  # 3 + 9 = 12 SID tokens, up to 24 items


def make_item_tokens(
    n_items: int, level_sizes: list[int] = LEVEL_SIZES, seed: int = 0
) -> np.ndarray:
    """int64 [n_items, depth] token ids of n_items distinct random SIDs (the sid contract layout)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in level_sizes], indexing="ij"), -1)
    codes = grid.reshape(-1, len(level_sizes))
    codes = codes[rng.choice(len(codes), size=n_items, replace=False)]
    offsets = 3 + np.concatenate([[0], np.cumsum(level_sizes[:-1])])
    return (codes + offsets).astype(np.int64)


def vocab_size(level_sizes: list[int] = LEVEL_SIZES) -> int:
    return 3 + sum(level_sizes)


def sid_vocab_json(level_sizes: list[int] = LEVEL_SIZES) -> str:
    import json

    return json.dumps({"level_sizes": level_sizes, "n_special": 3})


def write_sequences(path, n_users: int, n_items: int, length: int = 12, seed: int = 0) -> str:
    """SEQUENCES parquet with a learnable pattern: each user walks items i, i+1, i+2, … (mod n)."""
    rng = np.random.default_rng(seed)
    rows = {"user_id": [], "items": [], "loss_from": []}
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows["user_id"].append(str(u))
        rows["items"].append([(start + j) % n_items for j in range(length)])
        rows["loss_from"].append(1)
    pq.write_table(pa.table(rows, schema=SEQUENCES), str(path))
    return str(path)
