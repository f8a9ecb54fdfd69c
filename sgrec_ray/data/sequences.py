"""Per-user time order, duplicate removal and the leave-one-out split, vectorised over a table
holding *all* events of a set of users (one bucket of the distributed data stage).

The rules are the in-memory stage's (:mod:`.validate`, :mod:`.split`), written as column
operations so a bucket of a million events takes seconds, not minutes:

- a duplicate is the same (user, item, timestamp) as an earlier row in file order (``file``, then
  ``row``); the first copy is kept;
- a user's events are sorted by time, ties kept in file order (the stable sort RecBole uses);
- users come in natural id order (``ukey``, see :func:`.batch_validate.natural_sort_key`);
- leave-one-out: last event → test, second last → valid, the rest → training windows of
  :func:`.split.train_windows` (same starts, ends and ``loss_from``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray.data import schema, split


@dataclass
class Ordered:
    """A bucket's events after duplicate removal, in (user, time, file order); ``starts`` are the
    offsets of each user's first event (plus the total at the end)."""

    events: pa.Table
    starts: np.ndarray  # int64 [n_users + 1]
    duplicates: pa.Table  # (file, row) of the rows dropped as duplicates, in file order


def order_events(events: pa.Table) -> Ordered:
    """Drop duplicate events (first copy in file order kept) and sort by user, time, file order."""
    by_key = pc.sort_indices(
        events,
        sort_keys=[
            ("ukey", "ascending"),
            ("timestamp", "ascending"),
            ("item_id", "ascending"),
            ("file", "ascending"),
            ("row", "ascending"),
        ],
    )
    t = events.take(by_key)
    same = np.zeros(t.num_rows, dtype=bool)
    if t.num_rows > 1:
        same[1:] = (
            pc.equal(t.column("ukey").slice(1), t.column("ukey").slice(0, t.num_rows - 1)).to_numpy(
                zero_copy_only=False
            )
            & (np.diff(t.column("timestamp").to_numpy()) == 0)
            & pc.equal(
                t.column("item_id").slice(1), t.column("item_id").slice(0, t.num_rows - 1)
            ).to_numpy(zero_copy_only=False)
        )
    duplicates = t.filter(pa.array(same)).select(["file", "row"])
    duplicates = duplicates.take(
        pc.sort_indices(duplicates, [("file", "ascending"), ("row", "ascending")])
    )
    t = t.filter(pa.array(~same))
    t = t.take(
        pc.sort_indices(
            t,
            sort_keys=[
                ("ukey", "ascending"),
                ("timestamp", "ascending"),
                ("file", "ascending"),
                ("row", "ascending"),
            ],
        )
    )
    n = t.num_rows
    new_user = np.ones(n, dtype=bool)
    if n > 1:
        new_user[1:] = ~pc.equal(
            t.column("ukey").slice(1), t.column("ukey").slice(0, n - 1)
        ).to_numpy(zero_copy_only=False)
    starts = np.append(np.flatnonzero(new_user), n).astype(np.int64)
    return Ordered(t, starts, duplicates)


def _gather_lists(values: np.ndarray, begin: np.ndarray, end: np.ndarray) -> pa.Array:
    """list<int32> whose k-th list is ``values[begin[k]:end[k]]``."""
    lengths = (end - begin).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - begin, lengths)
    flat = pa.array(values[idx].astype(np.int32), pa.int32())
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)


def _samples(
    user_ids: pa.Array, items: np.ndarray, stamps: np.ndarray, first: np.ndarray, pos: np.ndarray,
    max_history: int,
) -> pa.Table:  # fmt: skip
    """SAMPLES rows predicting the event at absolute position ``pos`` of users starting at ``first``."""
    return pa.table(
        [
            user_ids,
            _gather_lists(items, np.maximum(first, pos - max_history), pos),
            pa.array(items[pos].astype(np.int32), pa.int32()),
            pa.array(stamps[pos], pa.int64()),
            _gather_lists(items, first, pos),
        ],
        schema=schema.SAMPLES,
    )


@dataclass
class SplitTables:
    train: pa.Table
    valid: pa.Table
    test: pa.Table


def leave_one_out(
    user_ids: pa.Array,
    items: np.ndarray,
    stamps: np.ndarray,
    starts: np.ndarray,
    max_history: int,
    stride: int | None = None,
) -> SplitTables:
    """:func:`.split.leave_one_out` on users laid out flat: user ``u``'s events (oldest first) are
    ``items[starts[u]:starts[u + 1]]``; ``user_ids[u]`` names them. Same rows, same order."""
    stride = split.default_stride(max_history) if stride is None else stride
    first, stop = starts[:-1], starts[1:]
    n = stop - first
    has_test, has_valid = n >= 2, n >= 3
    test = _samples(
        user_ids.filter(pa.array(has_test)), items, stamps, first[has_test], stop[has_test] - 1,
        max_history,
    )  # fmt: skip
    valid = _samples(
        user_ids.filter(pa.array(has_valid)), items, stamps, first[has_valid],
        stop[has_valid] - 2, max_history,
    )  # fmt: skip

    # Training windows over the first L = n - 2 events (split.train_windows, vectorised).
    length = np.maximum(n - 2, 0)
    size = max_history + 1
    step = max(1, min(stride, max_history))
    windows = np.where(length < 2, 0, 1 + np.maximum(0, -(-(length - size) // step)))
    user_of = np.repeat(np.arange(len(n)), windows)
    k = np.arange(int(windows.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(windows) - windows, windows
    )
    begin = k * step
    end = np.minimum(begin + size, length[user_of])
    loss_from = np.where(k == 0, 1, size - step)
    train = pa.table(
        [
            user_ids.take(pa.array(user_of, pa.int64())),
            _gather_lists(items, first[user_of] + begin, first[user_of] + end),
            pa.array(loss_from.astype(np.int32), pa.int32()),
        ],
        schema=schema.SEQUENCES,
    )
    return SplitTables(train, valid, test)
