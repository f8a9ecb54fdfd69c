"""The canonical Arrow tables every loader produces and every later stage reads.

Loaders differ (MovieLens atomic files, a team's own Parquet logs, MiniOneRec CSVs); from the data
stage on, everything speaks these schemas. Items get a dense ``item_idx`` (0..n_items-1) because the
generator, the SID table and the metrics index arrays by it; the original ``item_id`` is kept for
people and for serving.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sgrec_ray import storage

# One row per item. Text fields named in data.item_text_fields are extra string columns.
ITEMS = pa.schema(
    [
        ("item_idx", pa.int32()),  # dense 0..n_items-1, the index used by every model and table
        ("item_id", pa.string()),  # the id in the source data
        ("title", pa.string()),
        ("text", pa.string()),  # the text that gets embedded for semantic IDs
    ]
)

# One row per (validated) event, sorted by user then time (stable: ties keep file order).
INTERACTIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_idx", pa.int32()),
        ("timestamp", pa.int64()),  # seconds since epoch
        ("rating", pa.float32()),  # null when the source has none
        ("value", pa.float32()),  # optional business value of the event (null if absent)
    ]
)

# Training sequences: every item at position >= loss_from is a next-item target given the items
# before it in the same row. Windows of a long history overlap, and loss_from makes each target
# count once.
SEQUENCES = pa.schema(
    [
        ("user_id", pa.string()),
        ("items", pa.list_(pa.int32())),
        ("loss_from", pa.int32()),
    ]
)

# Evaluation samples (valid / test): predict ``target`` from ``history`` (oldest first, already
# truncated to data.max_history). ``seen`` is every item the user interacted with before the target
# (not truncated), for seen-item exclusion.
SAMPLES = pa.schema(
    [
        ("user_id", pa.string()),
        ("history", pa.list_(pa.int32())),
        ("target", pa.int32()),
        ("timestamp", pa.int64()),
        ("seen", pa.list_(pa.int32())),
    ]
)

# Rejected input rows, kept with the reason (never dropped silently).
REJECTS = pa.schema(
    [
        ("source", pa.string()),  # which file
        ("row", pa.int64()),  # 0-based row number in that file
        ("reason", pa.string()),
        ("record", pa.string()),  # the offending row as JSON
    ]
)

# Semantic IDs shipped with the data (minionerec index json), for sid.method=precomputed: one row
# per item that has codes; codes[l] is the code at level l (token "<a_60>" → level 0, code 60).
SID_CODES = pa.schema(
    [
        ("item_idx", pa.int32()),
        ("codes", pa.list_(pa.int32())),
    ]
)

# File names inside <run>/data/
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"  # user_id + any feature columns (optional)
INTERACTIONS_FILE = "interactions.parquet"
REJECTS_FILE = "rejects.parquet"
TRAIN_FILE = "train.parquet"  # SEQUENCES
VALID_FILE = "valid.parquet"  # SAMPLES
TEST_FILE = "test.parquet"  # SAMPLES
STATS_FILE = "stats.json"
SID_CODES_FILE = "sid_codes.parquet"  # SID_CODES; only when the source ships SIDs (minionerec)

# Item vectors, one row per item: the sid stage's text embeddings (``<run>/sid/embeddings.parquet``)
# and the sasrec stage's collaborative vectors (``<run>/sasrec/item_vectors.parquet``). Here, below
# both stages, so neither imports the other to read what the other wrote.
EMBEDDINGS_FILE = "embeddings.parquet"
ITEM_VECTORS_FILE = "item_vectors.parquet"
EMBEDDINGS = pa.schema([("item_idx", pa.int32()), ("embedding", pa.list_(pa.float32()))])


def embeddings_table(item_idx: np.ndarray, embeddings: np.ndarray) -> pa.Table:
    """``embeddings.parquet``: item_idx int32, embedding list<float32>."""
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
    lists = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]).cast(
        pa.list_(pa.float32())
    )
    return pa.table(
        {"item_idx": pa.array(item_idx, pa.int32()), "embedding": lists}, schema=EMBEDDINGS
    )


def read_embeddings(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(item_idx int32 [n], embeddings float32 [n, dim]) from an ``embeddings.parquet`` table."""
    table = table.sort_by("item_idx")
    col = table.column("embedding").combine_chunks()
    dim = len(col[0]) if len(col) else 0
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return table.column("item_idx").to_numpy().astype(np.int32), flat.reshape(len(col), dim)


def read_vectors(uri: str, n_items: int) -> np.ndarray:
    """float32 [n_items, dim] from an (item_idx, embedding) table with one row per item."""
    idx, vectors = read_embeddings(storage.read_table(uri))
    if not np.array_equal(idx, np.arange(n_items)):
        raise ValueError(f"{uri}: needs one vector per item 0..{n_items - 1}")
    return vectors
