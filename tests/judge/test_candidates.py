"""Candidate sets: origins, exclusions, dedup, determinism, hard negatives by embedding or SID."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray.data import schema
from sgrec_ray.judge.candidates import Neighbours, build_candidates, random_items

N_ITEMS = 30


def samples() -> pa.Table:
    return pa.table(
        {
            "user_id": ["a", "b", "c"],
            "history": [[1, 2, 3], [], [4]],
            "target": [5, 6, 7],
            "timestamp": [100, 200, 300],
            "seen": [[1, 2, 3, 9], [], [4]],
        },
        schema=schema.SAMPLES,
    )


def neighbours() -> Neighbours:
    # Item i sits at angle i on a circle: the nearest items to i are i±1, then i±2, ...
    angles = np.arange(N_ITEMS) * 0.1
    return Neighbours(vectors=np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32))


def build(**kw) -> pa.Table:
    args = {"n_random": 3, "n_hard": 2, "split": "valid", "seed": 0, "neighbours": neighbours()}
    return build_candidates(samples(), N_ITEMS, **(args | kw))


def per_user(table: pa.Table) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["user_id"], []).append((row["item_idx"], row["origin"]))
    return out


def test_origins_counts_and_exclusions():
    table = build(beams=[[5, 9, 10], [11], []])
    rows = per_user(table)
    a = rows["a"]
    assert a[0] == (5, "target")
    origins = [o for _, o in a]
    # beam 5 is the target (kept as target), beam 9 was seen: only beam 10 stays
    assert origins.count("beam") == 1 and (10, "beam") in a
    assert origins.count("hard") == 2 and origins.count("random") == 3
    items = [i for i, _ in a]
    assert len(items) == len(set(items))  # no duplicates
    assert not set(items[1:]) & {1, 2, 3, 9, 5}  # negatives never seen or the target
    hard = [i for i, o in a if o == "hard"]
    assert hard == [4, 6]  # nearest to target 5, item 4/6 are one step away
    assert table.column("split").unique().to_pylist() == ["valid"]
    assert table.column("history").to_pylist()[0] == [1, 2, 3]
    assert table.column("timestamp").to_pylist()[0] == 100


def test_user_without_history_gets_a_full_set():
    rows = per_user(build())
    assert [o for _, o in rows["b"]].count("random") == 3 and rows["b"][0] == (6, "target")


def test_deterministic_and_stable_per_user():
    assert build().equals(build())
    assert not build().equals(build(seed=1))
    # Dropping a user does not change the other users' random negatives.
    only_c = build_candidates(
        samples().slice(2, 1), N_ITEMS, n_random=3, n_hard=0, split="valid", seed=0
    )
    full = per_user(build(n_hard=0))
    assert per_user(only_c)["c"] == full["c"]


def test_hard_needs_neighbours():
    with pytest.raises(ValueError, match="neighbours"):
        build(neighbours=None)


def test_neighbours_by_sid_codes():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 2]])
    nb = Neighbours(codes=codes)
    assert nb.similarity(0).tolist() == [3, 2, 1, 0, 2]
    assert nb.nearest(0, 2, exclude={1}) == [4, 2]


def test_random_items_small_catalogue():
    rng = np.random.default_rng(0)
    assert sorted(random_items(rng, 5, 10, {0, 1})) == [
        2,
        3,
        4,
    ]  # fewer when the catalogue runs out
    assert random_items(rng, 5, 2, {0, 1, 2, 3, 4}) == []
