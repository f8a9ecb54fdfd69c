"""Pairwise feedback: rating pairs, per-user cap, time split, user files, joins with judge scores."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sgrec_ray import storage
from sgrec_ray.data.validate import DataError
from sgrec_ray.judge.pairs import (
    attach_scores,
    build_pairs,
    pair_histories,
    pairs_to_judge,
    rating_pairs,
    read_pairs_file,
    time_split,
)
from sgrec_ray.judge.rows import JudgeRequest, prompt_spec, request_contexts
from sgrec_ray.runs import RunContext
from tests.judge import synthetic


def _interactions(rows: list[tuple[str, int, int, float | None]]) -> pa.Table:
    users, items, ts, ratings = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_idx": pa.array(items, pa.int32()),
            "timestamp": pa.array(ts, pa.int64()),
            "rating": pa.array(ratings, pa.float32()),
        }
    )


def test_rating_pairs_liked_over_disliked_with_pair_time():
    inter = _interactions(
        [
            ("a", 1, 10, 5.0),
            ("a", 2, 20, 4.0),
            ("a", 3, 30, 1.0),
            ("a", 4, 5, 2.0),
            ("a", 5, 40, 3.0),  # neutral: in no pair
            ("a", 6, 50, None),  # no rating: in no pair
            ("b", 7, 1, 5.0),  # b has no disliked item: no pairs
        ]
    )
    pairs = rating_pairs(inter, 4.0, 2.0, None)
    got = set(
        zip(
            pairs.column("preferred").to_pylist(),
            pairs.column("other").to_pylist(),
            pairs.column("timestamp").to_pylist(),
            strict=True,
        )
    )
    assert got == {(1, 3, 30), (1, 4, 10), (2, 3, 30), (2, 4, 20)}
    assert set(pairs.column("user_id").to_pylist()) == {"a"}


def test_rating_pairs_cap_is_deterministic_and_order_free():
    rng = np.random.default_rng(1)
    rows = [("u", i, int(rng.integers(0, 100)), 5.0 if i < 10 else 1.0) for i in range(20)]
    a = rating_pairs(_interactions(rows), 4.0, 2.0, 7, seed=3)
    b = rating_pairs(_interactions(rows[::-1]), 4.0, 2.0, 7, seed=3)
    assert a.num_rows == 7
    assert a.equals(b)
    assert not a.equals(rating_pairs(_interactions(rows), 4.0, 2.0, 7, seed=4))


def test_rating_thresholds_must_not_overlap():
    with pytest.raises(ValueError, match="positive_min_rating"):
        rating_pairs(_interactions([("a", 1, 1, 3.0)]), 3.0, 3.0, None)


def test_time_split_latest_pairs_held_out_ties_together():
    pairs = pa.table(
        {
            "user_id": ["a"] * 6,
            "preferred": pa.array([1] * 6, pa.int32()),
            "other": pa.array(range(6), pa.int32()),
            "timestamp": pa.array([1, 2, 3, 4, 4, 5], pa.int64()),
        }
    )
    table, cutoff = time_split(pairs, 0.34)  # ceil(0.34 * 6) = 3 → cutoff at t=4, ties included
    assert cutoff == 4
    assert table.column("split").to_pylist() == ["train"] * 3 + ["heldout"] * 3
    table, cutoff = time_split(pairs, 0.0)
    assert set(table.column("split").to_pylist()) == {"train"}
    with pytest.raises(ValueError, match="heldout_fraction"):
        time_split(pairs, 1.0)


def test_user_pairs_file_validation(tmp_path):
    items = {"m1": 0, "m2": 1, "m3": 2}
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,preferred_item_id\nu1,m1\n")
    with pytest.raises(DataError, match="other_item_id"):
        read_pairs_file(str(bad), items, {"u1"})

    good = tmp_path / "pairs.csv"
    good.write_text(
        "user_id,preferred_item_id,other_item_id,timestamp\n"
        "u1,m1,m2,100\n"
        "u1,m1,zzz,101\n"  # unknown item
        "u9,m1,m2,102\n"  # unknown user
        "u1,m3,m3,103\n"  # same item twice
        "u1,m3,m2,\n"  # no timestamp although the column exists
        "u1,m3,m1,104\n"
    )
    pairs, rejects = read_pairs_file(str(good), items, {"u1"})
    assert pairs.column("preferred").to_pylist() == [0, 2]
    assert pairs.column("other").to_pylist() == [1, 0]
    assert pairs.column("timestamp").to_pylist() == [100, 104]
    assert rejects == {"unknown_item": 1, "unknown_user": 1, "same_item": 1, "bad_timestamp": 1}

    no_time = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"user_id": ["u1"], "preferred_item_id": ["m2"], "other_item_id": ["m1"]}),
        no_time,
    )
    pairs, rejects = read_pairs_file(str(no_time), items, {"u1"})
    assert pairs.column("timestamp").null_count == 1 and not rejects


@pytest.fixture
def synth_ctx(tiny_cfg):
    ctx = RunContext(tiny_cfg)
    synthetic.build(ctx)
    return ctx


def test_build_pairs_from_run_and_from_file(synth_ctx, tmp_path):
    pairset = build_pairs(synth_ctx)
    counts = pairset.counts()
    cap = synth_ctx.cfg.aggregate.max_pairs_per_user
    assert counts["train"] + counts["heldout"] == synthetic.N_USERS * cap
    held = pairset.table.filter(pc.equal(pairset.table.column("split"), "heldout"))
    assert min(held.column("timestamp").to_pylist()) == pairset.cutoff
    assert build_pairs(synth_ctx).table.equals(pairset.table)  # deterministic

    path = tmp_path / "p.csv"
    path.write_text("user_id,preferred_item_id,other_item_id\nu000,i1,i2\nnobody,i1,i2\n")
    synth_ctx.cfg.aggregate.pairs_path = str(path)
    from_file = build_pairs(synth_ctx)
    assert from_file.source == "file" and from_file.rejects == {"unknown_user": 1}
    assert from_file.table.num_rows == 1 and from_file.cutoff is None


def test_pair_histories_by_hand():
    """Each pair's context: the user's events strictly before the pair's earlier event, without
    the pair's items, the last ``window`` of them; a same-second event is not the past."""
    inter = _interactions(
        [
            ("a", 6, 5, 3.0),
            ("a", 5, 8, 3.0),  # watched 5 early (neutral), rated it 1 later
            ("a", 1, 10, 5.0),
            ("a", 2, 20, 1.0),
            ("a", 3, 20, 3.0),  # same second as 2
            ("a", 4, 30, 5.0),
            ("a", 5, 40, 1.0),
            ("b", 7, 1, 5.0),  # b's pair starts with b's first event: no history
            ("b", 8, 2, 1.0),
        ]
    )
    pairs = rating_pairs(inter, 4.0, 2.0, None)
    got = {
        (u, i, j): (t0, h)
        for u, i, j, t0, h in zip(
            *(pairs.column(c).to_pylist() for c in ("user_id", "preferred", "other")),
            pairs.column("first_timestamp").to_pylist(),
            pair_histories(inter, pairs, window=3),
            strict=True,
        )
    }
    assert got == {
        ("a", 1, 2): (10, [6, 5]),
        ("a", 1, 5): (10, [6]),  # 5@8 is before the pair, but it is the pair's own item
        ("a", 4, 2): (20, [6, 5, 1]),  # 3@20 is not before 2@20
        ("a", 4, 5): (30, [1, 2, 3]),  # 6, 1, 2, 3 without 5, the last 3
        ("b", 7, 8): (1, []),
    }
    # A pairs file without time: every event of the user, pair items still left out.
    no_time = pairs.set_column(4, "first_timestamp", pa.nulls(pairs.num_rows, pa.int64()))
    assert pair_histories(inter, no_time.slice(0, 1), window=10) == [[6, 5, 3, 4, 5]]


def test_build_pairs_contexts_hold_no_pair_item_and_no_later_event(synth_ctx):
    pairset = build_pairs(synth_ctx)
    table = pairset.table
    window = synth_ctx.cfg.judge.long_history + synth_ctx.cfg.judge.recent_history
    inter = storage.read_table(synth_ctx.path("data", "interactions.parquet")).to_pylist()
    when = {(r["user_id"], r["item_idx"]): r["timestamp"] for r in inter}  # one event per item
    held_after_cutoff = 0
    for row in table.to_pylist():
        history = row["history"]
        assert len(history) <= window
        assert row["preferred"] not in history and row["other"] not in history
        assert all(when[(row["user_id"], i)] < row["first_timestamp"] for i in history)
        assert row["first_timestamp"] <= row["timestamp"]
        if row["split"] == "heldout":
            held_after_cutoff += any(when[(row["user_id"], i)] >= pairset.cutoff for i in history)
    # Held-out pairs see the history their user had then, past the global cutoff.
    assert held_after_cutoff > 0
    # Empty exactly when the pair's earlier event is the user's first: counted, kept.
    first_event: dict[str, int] = {}
    for r in inter:
        first_event[r["user_id"]] = min(
            r["timestamp"], first_event.get(r["user_id"], r["timestamp"])
        )
    rows = table.to_pylist()
    empty = [r["split"] for r in rows if r["first_timestamp"] == first_event[r["user_id"]]]
    assert [r["split"] for r in rows if not r["history"]] == empty
    assert pairset.empty_history() == {s: empty.count(s) for s in ("train", "heldout")}


def test_pairs_to_judge_covers_both_sides_in_each_pairs_context(synth_ctx):
    pairs = build_pairs(synth_ctx).table
    wanted = pairs_to_judge(synth_ctx)
    spec = prompt_spec(synth_ctx.cfg.judge)
    requests = [
        JudgeRequest(u, h, i)
        for u, h, i in zip(
            *(wanted.column(c).to_pylist() for c in ("user_id", "history", "item_idx")),
            strict=True,
        )
    ]
    contexts = request_contexts(requests, spec)
    keys = [(r.user_id, c, r.item_idx) for r, c in zip(requests, contexts, strict=True)]
    assert len(set(keys)) == len(keys)  # distinct
    judged = dict(zip(keys, (r.history for r in requests), strict=True))
    for row in pairs.to_pylist():
        for side in ("preferred", "other"):
            assert judged[(row["user_id"], row["context"], row[side])] == row["history"]
    assert len({c for _, c, _ in keys}) > synthetic.N_USERS  # several contexts per user
    some = pairs_to_judge(synth_ctx, users=["u001"])
    assert set(some.column("user_id").to_pylist()) == {"u001"}


def test_attach_scores_counts_what_it_skips():
    pairs = pa.table(
        {
            "user_id": ["a", "a", "a", "z", "a", "a"],
            "preferred": pa.array([1, 1, 3, 1, 1, 4], pa.int32()),
            "other": pa.array([2, 9, 2, 2, 2, 5], pa.int32()),
            "split": ["train", "train", "heldout", "heldout", "heldout", "heldout"],
            "history": [[7], [7], [7], [7], [8], []],
            "context": ["c7", "c7", "c7", "c7", "c8", "c0"],
        }
    )
    scores = pa.table(
        {
            "user_id": ["a"] * 8,
            "context": ["c7", "c7", "c7", "c7", "c7", "c8", "c0", "c0"],
            "item_idx": pa.array([1, 1, 2, 3, 3, 1, 4, 5], pa.int32()),
            "status": ["ok", "ok", "ok", "failed", "ok", "ok", "failed", "failed"],
            "profile": pa.array([4.0, 2.0, 1.0, None, float("inf"), 5.0, None, None], pa.float32()),
        }
    )
    table, a_pref, a_other, skipped = attach_scores(pairs, scores, ["profile"])
    assert table.column("scores").to_pylist() == [
        "ok",
        "not_judged",
        "judge_failed",
        "user_not_judged",
        "not_judged",  # item 2 was judged in context c7 only, never in this pair's c8
        "no_history",  # failed rows, empty history (the embedding judge's no_history)
    ]
    assert skipped == {
        "user_not_judged": 1,
        "not_judged": 2,
        "no_history": 1,
        "judge_failed": 1,
    }
    assert a_pref.tolist() == [[3.0]]  # two ok rows for (a, c7, 1) are averaged, c8's is not
    assert a_other.tolist() == [[1.0]]
