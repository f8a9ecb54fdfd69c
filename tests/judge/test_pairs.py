"""Pairwise feedback: rating pairs, per-user cap, time split, user files, joins with judge scores."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sgrec_ray.data.validate import DataError
from sgrec_ray.judge.pairs import (
    attach_scores,
    build_pairs,
    pairs_to_judge,
    rating_pairs,
    read_pairs_file,
    time_split,
)
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


def test_pairs_to_judge_covers_both_sides(synth_ctx):
    pairs = build_pairs(synth_ctx).table
    wanted = pairs_to_judge(synth_ctx)
    cols = [wanted.column(c).to_pylist() for c in ("user_id", "item_idx")]
    keys = set(zip(*cols, strict=True))
    sides = [pairs.column(c).to_pylist() for c in ("user_id", "preferred", "other")]
    for u, i, j in zip(*sides, strict=True):
        assert (u, i) in keys and (u, j) in keys
    assert len(keys) == wanted.num_rows  # distinct
    some = pairs_to_judge(synth_ctx, users=["u001"])
    assert set(some.column("user_id").to_pylist()) == {"u001"}
    # The context: u001's past before the cutoff, none of u001's pair items in it.
    history = some.column("history")[0].as_py()
    pair_items = set(some.column("item_idx").to_pylist())
    assert history and not pair_items & set(history)
    assert all(h == history for h in some.column("history").to_pylist())


def test_attach_scores_counts_what_it_skips():
    pairs = pa.table(
        {
            "user_id": ["a", "a", "a", "z"],
            "preferred": pa.array([1, 1, 3, 1], pa.int32()),
            "other": pa.array([2, 9, 2, 2], pa.int32()),
            "timestamp": pa.array([1, 2, 3, 4], pa.int64()),
            "split": ["train", "train", "heldout", "heldout"],
        }
    )
    scores = pa.table(
        {
            "user_id": ["a", "a", "a", "a", "a"],
            "item_idx": pa.array([1, 1, 2, 3, 3], pa.int32()),
            "status": ["ok", "ok", "ok", "failed", "ok"],
            "profile": pa.array([4.0, 2.0, 1.0, None, float("inf")], pa.float32()),
        }
    )
    table, a_pref, a_other, skipped = attach_scores(pairs, scores, ["profile"])
    assert table.column("scores").to_pylist() == [
        "ok",
        "not_judged",
        "judge_failed",
        "user_not_judged",
    ]
    assert skipped == {"user_not_judged": 1, "not_judged": 1, "judge_failed": 1}
    assert a_pref.tolist() == [[3.0]]  # two ok rows for (a, 1) are averaged
    assert a_other.tolist() == [[1.0]]
