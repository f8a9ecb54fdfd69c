"""Weak labels from ratings: each aspect computed by hand on a small history, then on real ML-100k."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sgrec_ray.align.labels import item_index, label_schema, validate_labels
from sgrec_ray.align.weak_labels import (
    rating_level,
    to_level,
    user_signals,
    weak_labels,
)
from sgrec_ray.config import DataSection
from sgrec_ray.data.items import genre_matrix
from sgrec_ray.data.stage import build

ITEMS = pa.table(
    {
        "item_idx": pa.array(range(6), pa.int32()),
        "item_id": [f"m{i}" for i in range(6)],
        "title": ["A-C", "A", "D", "C-D", "none", "S"],
        "genres": ["Action, Comedy", "Action", "Drama", "Comedy,Drama", None, "Sci-Fi"],
    }
)
# (user, item, timestamp, rating), listed newest first: the labeller must sort by time itself.
EVENTS = [
    ("u1", 0, 80, 5.0),  # t7: last event -> no_future
    ("u1", 2, 70, None),  # t6: no rating
    ("u1", 4, 60, 4.0),  # t5: item without genres
    ("u1", 3, 50, 2.0),  # t4
    ("u1", 5, 40, 1.0),  # t3
    ("u1", 0, 30, 4.0),  # t2
    ("u1", 2, 20, 3.0),  # t1
    ("u1", 1, 10, 5.0),  # t0: no history
    ("u2", 1, 16, 0.0),  # rating outside 1..5
    ("u2", 5, 15, 4.0),  # no history
]
INTERACTIONS = pa.table(
    {
        "user_id": [e[0] for e in EVENTS],
        "item_idx": pa.array([e[1] for e in EVENTS], pa.int32()),
        "timestamp": pa.array([e[2] for e in EVENTS], pa.int64()),
        "rating": pa.array([e[3] for e in EVENTS], pa.float32()),
    }
)
ASPECTS = ["profile", "future", "novelty"]


def scores(labels: pa.Table) -> list[tuple]:
    cols = ["timestamp", *ASPECTS, "holistic"]
    return [tuple(r[c] for c in cols) for r in labels.select(cols).to_pylist()]


def test_genre_matrix_reads_comma_lists():
    m = genre_matrix(ITEMS)  # vocabulary sorted: Action, Comedy, Drama, Sci-Fi
    assert m.shape == (6, 4)
    assert m[0].tolist() == [True, True, False, False]
    assert m[3].tolist() == [False, True, True, False]  # "Comedy,Drama" without a space
    assert not m[4].any()


def test_levels_map_and_round_half_up():
    assert rating_level(4.0, (1.0, 5.0), 5) == 4.0
    assert rating_level(4.0, (1.0, 5.0), 7) == 5.5
    assert rating_level(1.0, (1.0, 10.0), 3) == 1.0
    assert [to_level(x, 5) for x in (0.2, 1.5, 2.5, 3.49, 9.0)] == [1.0, 2.0, 3.0, 3.0, 5.0]


def test_user_signals_by_hand():
    # Action | Drama | Action+Comedy | nothing
    genres = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)
    s = user_signals(genres, future_window=2)
    assert np.isnan(s["profile"][0]) and np.isnan(s["novelty"][0])
    assert s["profile"][1:3].tolist() == [0.0, 0.5]
    assert s["novelty"][1:3].tolist() == [1.0, 0.5]  # Comedy new, Action seen
    assert s["future"][:3].tolist() == [0.5, 0.0, 0.0]  # the genre-less item shares nothing
    assert all(np.isnan(s[a][3]) for a in s)  # no genres: no signal


def test_pure_genre_signals_by_hand():
    labels, skipped = weak_labels(INTERACTIONS, ITEMS, ASPECTS, 5, future_window=2, rating_weight=0)
    # t1 Drama after [Action]: shares nothing with the past or the next two, all its genres new.
    # t2 Action+Comedy after [Action, Drama]: 1/2 past, 1/2 next (Comedy+Drama), 1/2 new -> 3.
    # t3 Sci-Fi: nothing shared, new. t4 Comedy+Drama: 2/4 past, 1/2 next, nothing new.
    assert scores(labels) == [
        (20, 1.0, 1.0, 5.0, 3.0),
        (30, 3.0, 3.0, 3.0, 4.0),
        (40, 1.0, 1.0, 5.0, 1.0),
        (50, 3.0, 3.0, 1.0, 2.0),
    ]
    assert skipped == {
        "short_history": 2,
        "no_genres": 1,
        "no_rating": 1,
        "no_future": 1,
        "rating_out_of_range": 1,
    }
    assert labels.num_rows + sum(skipped.values()) == INTERACTIONS.num_rows
    assert labels.schema == label_schema(ASPECTS)
    assert labels.column("item_id").to_pylist() == ["m2", "m0", "m5", "m3"]
    assert set(labels.column("source").to_pylist()) == {"weak:ratings"}
    assert labels.column("rationale").null_count == 4  # on purpose: see the module docstring


def test_rating_weight_mixes_the_rating_into_every_aspect():
    labels, _ = weak_labels(
        INTERACTIONS, ITEMS, ASPECTS, 5, future_window=2, rating_weight=0.5, source="weak:t"
    )
    # (rating + signal level) / 2, halves up: t2 (4+3)/2 = 3.5 -> 4; t3 Novelty (1+5)/2 = 3.
    assert scores(labels) == [
        (20, 2.0, 2.0, 4.0, 3.0),
        (30, 4.0, 4.0, 4.0, 4.0),
        (40, 1.0, 1.0, 3.0, 1.0),
        (50, 3.0, 3.0, 2.0, 2.0),
    ]
    only_rating, _ = weak_labels(INTERACTIONS, ITEMS, ASPECTS, 5, rating_weight=1.0)
    for a in ASPECTS:
        assert only_rating.column(a).equals(only_rating.column("holistic"))


def test_without_future_the_last_event_is_labelled():
    labels, skipped = weak_labels(INTERACTIONS, ITEMS, ["profile", "novelty"], 5, rating_weight=0)
    assert "no_future" not in skipped
    last = labels.filter(pc.equal(labels.column("timestamp"), 80)).to_pylist()[0]
    # Action+Comedy after A, D, A+C, S, C+D, (none), D: 3 of 7 share a genre -> 1 + 4*3/7 -> 3.
    assert (last["profile"], last["novelty"], last["holistic"]) == (3.0, 1.0, 5.0)


def test_bad_settings_and_data_fail_clearly():
    with pytest.raises(ValueError, match=r"no derivation for aspect\(s\) \['context'\]"):
        weak_labels(INTERACTIONS, ITEMS, ["profile", "context"], 5)
    with pytest.raises(ValueError, match="future_window"):
        weak_labels(INTERACTIONS, ITEMS, ASPECTS, 5, future_window=0)
    no_ratings = INTERACTIONS.set_column(3, "rating", pa.nulls(len(EVENTS), pa.float32()))
    with pytest.raises(ValueError, match="no ratings"):
        weak_labels(no_ratings, ITEMS, ASPECTS, 5)


def test_real_movielens_slice_gives_valid_varied_labels():
    data = build(DataSection(max_users=20))
    labels, skipped = weak_labels(data.interactions, data.items, ASPECTS, 5, future_window=5)
    assert labels.num_rows + sum(skipped.values()) == data.interactions.num_rows
    # Each user's first event has no history and last no future, unless its item has no genres.
    genres = genre_matrix(data.items)
    users = data.interactions.to_pandas().groupby("user_id", sort=False)["item_idx"]
    assert skipped["short_history"] == sum(genres[i].any() for i in users.first())
    assert skipped["no_future"] == sum(genres[i].any() for i in users.last())
    assert skipped["short_history"] >= 18 and set(skipped) <= {
        "short_history",
        "no_future",
        "no_genres",
    }
    clean, rejects = validate_labels(labels, ASPECTS, 5, item_index(data.items))
    assert rejects.num_rows == 0 and clean.equals(labels)
    # Scale 5: the holistic target is the user's own rating.
    rating = {(r["user_id"], r["item_idx"]): r["rating"] for r in data.interactions.to_pylist()}
    assert all(r["holistic"] == rating[(r["user_id"], r["item_idx"])] for r in labels.to_pylist())
    for a in ASPECTS:
        assert len(set(labels.column(a).to_pylist())) >= 3, a  # the data moves every aspect
