"""Splitting users' event sequences into training sequences and evaluation samples (pure functions).

Two protocols:

- ``leave_one_out`` (RecBole, the ML-100k standard): per user, the last event is the test sample,
  the second last the valid sample, the rest the training sequence.
- ``temporal`` (MiniOneRec): every (history, next item) sample of every user, sorted globally by the
  target's timestamp and cut 8:1:1, so validation and test lie strictly later in time than training
  (except for ties at the cut).

Event order within a user is a *stable* sort by timestamp that keeps file order for ties: on ML-100k
three quarters of the ratings share their (user, second) with another, so "which item is last"
depends on it; the stable sort is what RecBole does, which keeps our numbers comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sgrec_ray.data import schema


@dataclass
class UserSequence:
    """One user's events, oldest first (items as item_idx)."""

    user_id: str
    items: list[int]
    timestamps: list[int]


@dataclass
class Split:
    """Rows of the three output tables, as plain dicts matching SEQUENCES / SAMPLES."""

    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)

    def tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        return (
            pa.Table.from_pylist(self.train, schema=schema.SEQUENCES),
            pa.Table.from_pylist(self.valid, schema=schema.SAMPLES),
            pa.Table.from_pylist(self.test, schema=schema.SAMPLES),
        )


def user_event_order(user_keys: Sequence[int], timestamps: Sequence[int]) -> np.ndarray:
    """Indices grouping events by user (ascending key), each user's by time; ties keep input order.

    Two stable argsorts (time, then user) rather than one lexsort, so the tie rule is explicit.
    """
    ts = np.asarray(timestamps, dtype=np.int64)
    users = np.asarray(user_keys, dtype=np.int64)
    by_time = np.argsort(ts, kind="stable")
    return by_time[np.argsort(users[by_time], kind="stable")]


def train_windows(length: int, max_history: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, loss_from)`` over a training sequence of ``length`` items.

    Windows hold up to ``max_history + 1`` items and start every ``stride`` items; the last one ends
    at the sequence end. ``loss_from`` (relative to the window) skips the items already used as
    targets by the previous window, so every position >= 1 of the sequence is a target exactly once,
    and each target sees up to ``max_history`` items before it within its window.
    Sequences with fewer than 2 items have no target and give no window.
    """
    if length < 2:
        return []
    size = max_history + 1
    stride = max(1, min(stride, max_history))  # stride <= max_history keeps windows overlapping
    windows = []
    start, prev_end = 0, 0
    while True:
        end = min(start + size, length)
        loss_from = 1 if start == 0 else prev_end - start
        windows.append((start, end, loss_from))
        if end == length:
            return windows
        prev_end = end
        start += stride


def default_stride(max_history: int) -> int:
    """Stride of the data stage's training windows: half a window, so each target keeps context."""
    return max(1, max_history // 2)


def _sample(user: UserSequence, i: int, max_history: int) -> dict:
    return {
        "user_id": user.user_id,
        "history": user.items[max(0, i - max_history) : i],
        "target": user.items[i],
        "timestamp": user.timestamps[i],
        "seen": user.items[:i],
    }


def leave_one_out(
    users: Sequence[UserSequence], max_history: int, stride: int | None = None
) -> Split:
    """Per user: last event → test, second last → valid, the rest → training windows.

    Test history = every event before the test item (the valid item included), valid history =
    every event before the valid item, both truncated to the last ``max_history``; ``seen`` is
    not truncated. A user with n events gives a test sample if n >= 2, a valid one if n >= 3 and
    training rows if n >= 4 (a training sequence needs two items to have a target).
    """
    stride = default_stride(max_history) if stride is None else stride
    out = Split()
    for user in users:
        n = len(user.items)
        if n >= 2:
            out.test.append(_sample(user, n - 1, max_history))
        if n >= 3:
            out.valid.append(_sample(user, n - 2, max_history))
        for start, end, loss_from in train_windows(max(n - 2, 0), max_history, stride):
            out.train.append(
                {"user_id": user.user_id, "items": user.items[start:end], "loss_from": loss_from}
            )
    return out


def split_counts(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Sizes of train/valid/test for ``n`` samples and ``ratios`` (normalised; remainder → test)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"data.split_ratios must be 3 non-negative numbers, got {list(ratios)}")
    total = float(sum(ratios))
    n_train = int(n * ratios[0] / total)
    n_valid = int(n * (ratios[0] + ratios[1]) / total) - n_train
    return n_train, n_valid, n - n_train - n_valid


def temporal(users: Sequence[UserSequence], max_history: int, ratios: Sequence[float]) -> Split:
    """MiniOneRec's protocol: all (history, target) samples, sorted by target time, cut by ratios.

    Samples are every position i >= 1 of every user (history = up to ``max_history`` items before
    it). They are put in (user order, position) order and then stably sorted by the target's
    timestamp, so the cut is deterministic. Training samples become SEQUENCES rows
    ``items = history + [target]``, ``loss_from = len(history)`` (one target per row).
    """
    # Rank (user, position) keys by time first; build the rows afterwards, so ``seen`` lists are
    # materialised only for the valid/test samples that carry them.
    keys = [(u, i) for u, user in enumerate(users) for i in range(1, len(user.items))]
    stamps = np.asarray([users[u].timestamps[i] for u, i in keys], dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    n_train, n_valid, _ = split_counts(len(keys), ratios)
    out = Split()
    for rank, k in enumerate(order):
        u, i = keys[k]
        user = users[u]
        if rank < n_train:
            start = max(0, i - max_history)
            out.train.append(
                {
                    "user_id": user.user_id,
                    "items": user.items[start : i + 1],
                    "loss_from": i - start,
                }
            )
        else:
            (out.valid if rank < n_train + n_valid else out.test).append(
                _sample(user, i, max_history)
            )
    return out
