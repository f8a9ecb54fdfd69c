"""The vectorised pieces of the distributed data stage agree with the row-by-row originals."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pyarrow as pa

from sgrec_ray.data import sequences, split
from sgrec_ray.data.batch_validate import natural_sort_key, validate_event_batch
from sgrec_ray.data.loaders import natural_key
from sgrec_ray.data.validate import Rejects, Source, validate_events


def test_natural_sort_key_orders_like_natural_key():
    rng = random.Random(0)
    alphabet = ["", "a", "b", "A", "u", "-", "0", "7", "007", "10", "2", "99", "é", " "]
    ids = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(3000)}
    ids = [i for i in ids if i]
    assert sorted(ids, key=natural_key) == sorted(ids, key=natural_sort_key)


def test_batch_validation_matches_row_by_row_on_mixed_types():
    table = pa.table(
        {
            "u": pa.array(["1", " 2 ", None, "", "3", "3", "4", "5", "5", "6"], pa.string()),
            "i": pa.array(["A", "B", "A", "A", None, "A", "Z", "B", "B", "A"], pa.string()),
            "t": pa.array(
                ["10", "2021-01-01T00:00:00Z", "1", "1", "1", "1.5", "x", "5", "5", "7"],
                pa.string(),
            ),
            "r": pa.array(["4", "", "1", "1", "1", "nan", "2", "3", "3", "abc"], pa.string()),
            "v": pa.array([1.0, None, 1.0, 1.0, 1.0, float("inf"), 2.0, 1.0, 1.0, 0.5]),
        }
    )
    columns = {"user_id": "u", "item_id": "i", "timestamp": "t", "rating": "r", "value": "v"}
    rejects = Rejects()
    events = validate_events(Source(table, "log.csv", columns), {"A", "B"}, rejects)
    clean, bad = validate_event_batch(
        table, columns, pa.array(["A", "B"]), "log.csv", 0, np.arange(table.num_rows)
    )
    # duplicates are checked later (per user): here rows 7 and 8 both pass
    assert clean.column("row").to_pylist() == [0, 1, 7, 8]
    assert clean.column("user_id").to_pylist() == ["1", "2", "5", "5"]
    assert clean.column("timestamp").to_pylist() == [10, 1609459200, 5, 5]
    assert clean.column("rating").to_pylist() == [4.0, None, 3.0, 3.0]
    assert events.row == [0, 1, 7]  # row 8 duplicates row 7
    assert (
        bad.to_pylist()
        == rejects.table()
        .filter(pa.compute.not_equal(rejects.table().column("reason"), "duplicate_event"))
        .to_pylist()
    )


def test_typed_columns_take_the_same_values():
    stamps = [dt.datetime(2021, 1, 1), None]
    table = pa.table(
        {
            "user_id": pa.array([7, 8], pa.int64()),
            "item_id": pa.array([1.0, float("nan")]),
            "timestamp": pa.array(stamps, pa.timestamp("s")),
            "rating": pa.array([True, False]),
        }
    )
    columns = {c: c for c in table.column_names}
    rejects = Rejects()
    events = validate_events(Source(table, "f", columns), {"1"}, rejects)
    clean, bad = validate_event_batch(table, columns, pa.array(["1"]), "f", 0, np.arange(2))
    assert bad.to_pylist() == rejects.table().to_pylist()
    assert clean.num_rows == len(events)


def _random_users(rng: np.random.Generator, n_users: int) -> list[split.UserSequence]:
    users = []
    for u in range(n_users):
        n = int(rng.integers(0, 40))
        users.append(
            split.UserSequence(
                str(u), rng.integers(0, 50, n).tolist(), sorted(rng.integers(0, 9, n).tolist())
            )
        )
    return users


def test_vectorised_leave_one_out_equals_the_reference():
    rng = np.random.default_rng(0)
    for max_history, stride in [(1, None), (3, 1), (5, None), (8, 3), (50, None)]:
        users = [u for u in _random_users(rng, 60) if u.items]
        ref = split.leave_one_out(users, max_history, stride)
        lengths = np.array([len(u.items) for u in users])
        starts = np.concatenate([[0], np.cumsum(lengths)])
        got = sequences.leave_one_out(
            pa.array([u.user_id for u in users]),
            np.concatenate([u.items for u in users]),
            np.concatenate([u.timestamps for u in users]),
            starts,
            max_history,
            stride,
        )
        train, valid, test = ref.tables()
        assert got.train.equals(train), (max_history, stride)
        assert got.valid.equals(valid) and got.test.equals(test)


def test_order_events_drops_later_copies_and_keeps_file_order_for_ties():
    table = pa.table(
        {
            "user_id": ["2", "10", "2", "2", "2"],
            "ukey": [natural_sort_key(u) for u in ["2", "10", "2", "2", "2"]],
            "item_id": ["a", "b", "c", "a", "d"],
            "timestamp": pa.array([5, 1, 5, 5, 3], pa.int64()),
            "rating": pa.array([None] * 5, pa.float64()),
            "value": pa.array([None] * 5, pa.float64()),
            "file": pa.array([1, 0, 0, 0, 0], pa.int32()),
            "row": pa.array([0, 0, 1, 2, 3], pa.int64()),
        }
    )
    out = sequences.order_events(table)
    assert out.duplicates.to_pylist() == [{"file": 1, "row": 0}]  # file 0 row 2 came first
    assert out.events.column("item_id").to_pylist() == ["d", "c", "a", "b"]
    assert out.starts.tolist() == [0, 3, 4]
