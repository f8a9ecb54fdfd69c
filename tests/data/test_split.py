"""Split protocols: stable tie order, leave-one-out by hand, the loss_from invariant, 8:1:1 cuts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.data import split
from sgrec_ray.data.split import UserSequence


def test_user_event_order_is_stable_for_ties():
    users = [1, 0, 1, 0, 1, 1]
    stamps = [5, 9, 5, 3, 1, 5]
    # user 0: rows 3 (t3), 1 (t9); user 1: row 4 (t1), then rows 0, 2, 5 (all t5) in file order
    assert split.user_event_order(users, stamps).tolist() == [3, 1, 4, 0, 2, 5]


def test_leave_one_out_by_hand():
    user = UserSequence("u", items=[7, 3, 9, 4, 8, 1], timestamps=[1, 2, 3, 4, 5, 6])
    out = split.leave_one_out([user], max_history=2, stride=1)
    assert out.test == [
        {"user_id": "u", "history": [4, 8], "target": 1, "timestamp": 6, "seen": [7, 3, 9, 4, 8]}
    ]
    assert out.valid == [
        {"user_id": "u", "history": [9, 4], "target": 8, "timestamp": 5, "seen": [7, 3, 9, 4]}
    ]
    # training sequence [7, 3, 9, 4] in windows of 3 with stride 1
    assert out.train == [
        {"user_id": "u", "items": [7, 3, 9], "loss_from": 1},
        {"user_id": "u", "items": [3, 9, 4], "loss_from": 2},
    ]


def test_leave_one_out_short_users():
    users = [UserSequence(str(n), list(range(n)), list(range(n))) for n in (1, 2, 3, 4)]
    out = split.leave_one_out(users, max_history=5)
    assert [s["user_id"] for s in out.test] == ["2", "3", "4"]
    assert [s["user_id"] for s in out.valid] == ["3", "4"]
    assert out.train == [{"user_id": "4", "items": [0, 1], "loss_from": 1}]


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(0, 120),
    max_history=st.integers(1, 30),
    stride=st.one_of(st.none(), st.integers(1, 40)),
)
def test_every_position_is_a_target_exactly_once(length, max_history, stride):
    stride = split.default_stride(max_history) if stride is None else stride
    targets = []
    for start, end, loss_from in split.train_windows(length, max_history, stride):
        assert 1 <= end - start <= max_history + 1
        assert 1 <= loss_from < end - start  # every window trains at least one target
        targets += range(start + loss_from, end)
    assert targets == list(range(1, length))  # each position >= 1 once, in order


def test_windows_cover_long_sequences_with_context():
    windows = split.train_windows(60, max_history=50, stride=25)
    assert windows == [(0, 51, 1), (25, 60, 26)]


def test_temporal_split_proportions_and_time_order():
    users = [
        UserSequence(f"u{u}", list(range(u, u + 11)), [u + 10 * i for i in range(11)])
        for u in range(20)
    ]
    out = split.temporal(users, max_history=4, ratios=[0.8, 0.1, 0.1])
    n = 20 * 10  # every position >= 1 of every user
    assert (len(out.train), len(out.valid), len(out.test)) == (160, 20, 20)
    # everything in valid is no earlier than train's latest target, test no earlier than valid
    by_user = {u.user_id: u for u in users}
    train_ts = [by_user[r["user_id"]].timestamps[r["items"][-1] - int(r["user_id"][1:])]
                for r in out.train]  # fmt: skip
    assert max(train_ts) <= min(s["timestamp"] for s in out.valid)
    assert max(s["timestamp"] for s in out.valid) <= min(s["timestamp"] for s in out.test)
    assert all(r["loss_from"] == len(r["items"]) - 1 for r in out.train)
    assert all(len(s["history"]) <= 4 for s in out.valid + out.test)
    assert sum(split.split_counts(n, [8, 1, 1])) == n


def test_split_counts():
    assert split.split_counts(10, [0.8, 0.1, 0.1]) == (8, 1, 1)
    assert split.split_counts(7, [0.5, 0.5, 0.0]) == (3, 4, 0)
