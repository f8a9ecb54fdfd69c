"""WEAK point-wise labels from MovieLens-style ratings, for data that has no teacher and no reviewer.

These are **weak labels**: a proxy built from the user's own rating and from genre overlaps, not
the paper's teacher-drafted, person-verified labels. They are good enough to teach a small judge
what the aspects mean on this data and to measure before/after alignment honestly; they are not a
ground truth of "Profile" or "Novelty", and results on them should be reported as such.

For each rated event (user u rates item i at position t of u's time-ordered events; ties keep the
data stage's order), with G(x) the genre set of item x (``items.genres``, e.g. "Action, Comedy"):

- **holistic** = the rating mapped linearly from ``rating_range`` (1..5) onto 1..scale, rounded
  half up. With scale 5 it is the rating itself.
- a genre **signal** s ∈ [0, 1] per aspect:

  - Profile: share of u's earlier events (all of them: the long-term history) whose item shares
    at least one genre with i;
  - Future: share of u's next ``future_window`` events after t whose item shares at least one genre
    with i. These events come *after* the judged moment, which the judge's prompt never shows: that
    is what makes Future a label (where the user went next) and never a feature;
  - Novelty: share of G(i) that no earlier item of u had (1 = every genre is new to u).

- each aspect label = round_half_up(w · holistic_raw + (1 − w) · (1 + s · (scale − 1))), clipped
  to 1..scale, where holistic_raw is the unrounded mapped rating and w = ``rating_weight``. The
  rating term is what makes an aspect about *this user's* judgement: new genres the user then
  rated 1 star are not a useful discovery (Novelty), a familiar genre the user disliked is not a
  fit with their interests (Profile). w = 0 gives the pure genre signal, w = 1 the rating alone.

Events that cannot get a label are counted by reason, never dropped silently: ``no_rating``,
``rating_out_of_range``, ``no_genres`` (the item has none, so no signal exists),
``short_history`` (fewer than ``min_history`` earlier events: Profile and Novelty would be
undefined), ``no_future`` (the last event of a user, when Future is an aspect).

The rationale column stays empty on purpose: any sentence here would cite the rating and the
future events, which the judge cannot see, and training on it would teach the judge to invent them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray.align.labels import label_schema
from sgrec_ray.data.items import genre_matrix

NO_RATING = "no_rating"
RATING_OUT_OF_RANGE = "rating_out_of_range"
NO_GENRES = "no_genres"
SHORT_HISTORY = "short_history"
NO_FUTURE = "no_future"
SUPPORTED_ASPECTS = ("profile", "future", "novelty")


def rating_level(rating: float, rating_range: tuple[float, float], scale: int) -> float:
    """A rating mapped linearly onto [1, scale] (unrounded): 1..5 → 1..scale."""
    lo, hi = rating_range
    return 1.0 + (rating - lo) / (hi - lo) * (scale - 1)


def to_level(value: float, scale: int) -> float:
    """A whole level in 1..scale, rounding halves up (Python's round() would send 2.5 to 2)."""
    return float(min(scale, max(1, int(np.floor(value + 0.5)))))


def user_signals(genres: np.ndarray, future_window: int) -> dict[str, np.ndarray]:
    """Profile, Future and Novelty signals in [0, 1] for every event of one user.

    ``genres``: bool [n_events, n_genres], the user's items in time order. Returns per aspect a
    float array [n_events], NaN where undefined (no earlier events for Profile/Novelty, no later
    events for Future, an item without genres for all three).
    """
    n = len(genres)
    m = genres.astype(np.float32)
    out = {a: np.full(n, np.nan) for a in SUPPORTED_ASPECTS}
    seen = np.zeros(genres.shape[1], dtype=bool)  # genres of the events before t
    for t in range(n):
        own = genres[t]
        if own.any():
            # One row of the overlap matrix at a time: memory O(n), not O(n²), for long users.
            shares = (m @ m[t]) > 0
            if t:
                out["profile"][t] = shares[:t].mean()
                out["novelty"][t] = (own & ~seen).sum() / own.sum()
            if t + 1 < n:
                out["future"][t] = shares[t + 1 : t + 1 + future_window].mean()
        seen |= own
    return out


def weak_labels(
    interactions: pa.Table,
    items: pa.Table,
    aspects: Sequence[str],
    scale: int,
    *,
    future_window: int = 5,
    rating_weight: float = 0.5,
    min_history: int = 1,
    rating_range: tuple[float, float] = (1.0, 5.0),
    source: str = "weak:ratings",
) -> tuple[pa.Table, dict[str, int]]:
    """Weak labels for every rated event that can have one (derivation: module docstring).

    Args:
        interactions: the data stage's INTERACTIONS (user_id, item_idx, timestamp, rating).
        items: the data stage's items (item_idx, item_id, genres).
        aspects: ``judge.aspects``; only profile, future and novelty can be derived here.
        scale: ``judge.scale``. The other arguments are ``align.*`` settings.

    Returns:
        (``label_schema(aspects)`` table sorted by user then time, {skip reason: count} for the
        events that got no label; labels + skipped = events).

    Raises:
        ValueError for an aspect with no derivation (context), bad settings, or no ratings at all.
    """
    unknown = [a for a in aspects if a not in SUPPORTED_ASPECTS]
    if unknown:
        raise ValueError(
            f"weak labels have no derivation for aspect(s) {unknown} (only "
            f"{list(SUPPORTED_ASPECTS)}); drop them from judge.aspects or bring labels "
            "(align.labels_path)"
        )
    if future_window < 1 or min_history < 1 or not 0.0 <= rating_weight <= 1.0:
        raise ValueError(
            f"align.future_window ({future_window}) and align.min_history ({min_history}) must be "
            f">= 1, align.rating_weight ({rating_weight}) in [0, 1]"
        )
    if interactions.column("rating").null_count == interactions.num_rows:
        raise ValueError(
            "the interactions have no ratings, so no weak labels can be derived; bring labels "
            "(align.labels_path)"
        )
    genres = genre_matrix(items)
    item_ids = dict(
        zip(items.column("item_idx").to_pylist(), items.column("item_id").to_pylist(), strict=True)
    )
    df = interactions.select(["user_id", "item_idx", "timestamp", "rating"]).to_pandas()
    df = df.sort_values(["user_id", "timestamp"], kind="stable")  # stable: ties keep data order
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for user_id, events in df.groupby("user_id", sort=False):
        item_idx = events["item_idx"].to_numpy()
        signals = user_signals(genres[item_idx], future_window)
        for t, (item, stamp, rating) in enumerate(
            zip(item_idx, events["timestamp"], events["rating"], strict=True)
        ):
            reason = _skip_reason(rating, rating_range, genres[item].any(), t, min_history)
            if reason is None and "future" in aspects and np.isnan(signals["future"][t]):
                reason = NO_FUTURE
            if reason is not None:
                skipped[reason] += 1
                continue
            raw = rating_level(float(rating), rating_range, scale)
            row = {a: _blend(raw, signals[a][t], rating_weight, scale) for a in aspects}
            rows.append(
                row
                | {
                    "user_id": str(user_id),
                    "item_idx": int(item),
                    "item_id": item_ids[int(item)],
                    "holistic": to_level(raw, scale),
                    "rationale": None,
                    "source": source,
                    "timestamp": int(stamp),
                }
            )
    return pa.Table.from_pylist(rows, schema=label_schema(aspects)), dict(skipped)


def _skip_reason(
    rating: float, rating_range: tuple[float, float], has_genres: bool, t: int, min_history: int
) -> str | None:
    if rating is None or np.isnan(rating):
        return NO_RATING
    if not rating_range[0] <= rating <= rating_range[1]:
        return RATING_OUT_OF_RANGE
    if not has_genres:
        return NO_GENRES
    if t < min_history:
        return SHORT_HISTORY
    return None


def _blend(rating_raw: float, signal: float, rating_weight: float, scale: int) -> float:
    """One aspect's label: the rating and the aspect's genre signal, both on 1..scale, mixed."""
    return to_level(
        rating_weight * rating_raw + (1.0 - rating_weight) * (1.0 + signal * (scale - 1)), scale
    )
