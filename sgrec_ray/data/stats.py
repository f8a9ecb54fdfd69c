"""Dataset statistics: what the data stage produced, as a dict (manifest, stats.json) and a table.

The numbers a reader checks first: how many users/items/events survived, how many rows were rejected
and why, how many users were too short to split, and how big each split is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def compute_stats(
    *,
    user_lengths: Sequence[int],
    n_items: int,
    ratings: Sequence[float | None],
    rejects: Mapping[str, int],
    users_excluded: int,
    min_user_events: int,
    train: pa.Table,
    valid: pa.Table,
    test: pa.Table,
    items_missing_text: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Figures of one data-stage run.

    ``user_lengths`` are the validated event counts of every kept user, including the users that
    were then excluded from the splits for having fewer than ``min_user_events`` events (they still
    count in ``users`` and ``interactions``; ``users_excluded_few_events`` says how many).
    """
    lengths = np.asarray(user_lengths, dtype=np.int64)
    rated = [r for r in ratings if r is not None]
    return stats_from_counts(
        length_hist=np.bincount(lengths) if lengths.size else np.zeros(0, dtype=np.int64),
        n_items=n_items,
        rating_mean=float(np.mean(rated)) if rated else None,
        rejects=rejects,
        users_excluded=users_excluded,
        min_user_events=min_user_events,
        train_rows=train.num_rows,
        train_targets=train_targets(train),
        valid_rows=valid.num_rows,
        test_rows=test.num_rows,
        items_missing_text=items_missing_text,
        extra=extra,
    )


def train_targets(train: pa.Table) -> int:
    """Next-item targets in SEQUENCES rows: sum of len(items) - loss_from."""
    if not train.num_rows:
        return 0
    sizes = pc.list_value_length(train.column("items"))
    return int(pc.sum(pc.subtract(sizes, train.column("loss_from"))).as_py())


def _quantile_from_hist(hist: np.ndarray, position: int) -> int:
    """The value at ``position`` (0-based) of the sorted values that ``hist`` (a bincount) counts."""
    return int(np.searchsorted(np.cumsum(hist), position, side="right"))


def stats_from_counts(
    *,
    length_hist: np.ndarray,
    n_items: int,
    rating_mean: float | None,
    rejects: Mapping[str, int],
    users_excluded: int,
    min_user_events: int,
    train_rows: int,
    train_targets: int,
    valid_rows: int,
    test_rows: int,
    items_missing_text: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The stats dict from aggregates, so a distributed stage can compute it without the log:
    ``length_hist[k]`` = users with k events (a bincount, exact min/median/mean/max)."""
    hist = np.asarray(length_hist, dtype=np.int64)
    values = np.arange(len(hist), dtype=np.int64)
    n_users, n_events = int(hist.sum()), int((hist * values).sum())
    present = np.flatnonzero(hist)
    median = None
    if n_users:
        low = _quantile_from_hist(hist, (n_users - 1) // 2)
        high = _quantile_from_hist(hist, n_users // 2)
        median = float((low + high) / 2)
    stats: dict[str, Any] = {
        "users": n_users,
        "items": int(n_items),
        "interactions": n_events,
        "sparsity": round(1.0 - n_events / (n_users * n_items), 6) if n_users and n_items else None,
        "user_events_min": int(present[0]) if n_users else None,
        "user_events_median": median,
        "user_events_mean": round(n_events / n_users, 2) if n_users else None,
        "user_events_max": int(present[-1]) if n_users else None,
        "rating_mean": round(rating_mean, 4) if rating_mean is not None else None,
        "rejects_total": int(sum(rejects.values())),
        "rejects": dict(sorted(rejects.items())),
        "min_user_events": int(min_user_events),
        "users_excluded_few_events": int(users_excluded),
        "items_missing_text": int(items_missing_text),
        "train_rows": int(train_rows),
        "train_targets": int(train_targets),
        "valid_samples": int(valid_rows),
        "test_samples": int(test_rows),
    }
    stats.update(extra or {})
    return stats


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return (
            f"{value:,.4f}".rstrip("0").rstrip(".") if not value.is_integer() else f"{value:,.1f}"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_stats(stats: Mapping[str, Any], title: str = "data") -> str:
    """A small aligned two-column table; nested dicts become ``name.key`` rows, lists a row each."""
    rows: list[tuple[str, str]] = []
    for key, value in stats.items():
        if isinstance(value, Mapping):
            rows.extend((f"{key}.{k}", _fmt(v)) for k, v in value.items())
            if not value:
                rows.append((key, "none"))
        elif isinstance(value, list):
            rows.extend((key, _fmt(v)) for v in value)
        else:
            rows.append((key, _fmt(value)))
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"── {title} " + "─" * max(0, width + 10 - len(title))]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
