"""Ranking metrics against hand-computed values and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sgrec_ray.eval.popularity import item_counts, popularity_ranking, recommend_popular
from sgrec_ray.metrics import (
    hit_rate,
    mrr,
    ndcg,
    paired_difference,
    rank_standard_errors,
    ranking_metrics,
    target_ranks,
)


def test_hand_computed_example():
    ranked = [[3, 1, 2], [0, 1, 2], [5, 4, 3]]
    targets = [1, 0, 9]
    m = ranking_metrics(ranked, targets, ks=[1, 2, 3], n_items=10)
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert m["mrr"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["valid_rate"] == 1.0
    assert m["coverage@3"] == pytest.approx(6 / 10)


def test_paired_difference_by_hand():
    a = np.array([0, -1, 3, 12])  # ranks of the target per user (-1: not recommended)
    b = np.array([1, 2, -1, 0])
    out = paired_difference([a], [b], k=10)
    ga = np.array([1.0, 0.0, 1 / math.log2(5), 0.0])  # rank 12 is outside the top 10
    gb = np.array([1 / math.log2(3), 0.5, 0.0, 1.0])
    d = ga - gb
    assert out["ndcg@10"][0] == pytest.approx(d.mean())
    assert out["ndcg@10"][1] == pytest.approx(d.std(ddof=1) / 2)  # sqrt(4 users)
    assert out["hr@10"][0] == pytest.approx((2 - 3) / 4)
    # Seeds are averaged per user before differencing: two runs of a, one of b.
    two = paired_difference([a, b], [b], k=10)
    assert two["ndcg@10"][0] == pytest.approx(d.mean() / 2)
    with pytest.raises(ValueError, match="different numbers of users"):
        paired_difference([a], [b[:3]], k=10)


def test_paired_error_is_smaller_than_the_unpaired_on_shared_users():
    rng = np.random.default_rng(0)
    base = np.where(rng.random(2000) < 0.3, rng.integers(0, 10, 2000), -1)
    better = base.copy()
    better[:40] = 0  # the same users, 40 of them moved to the top
    d, se = paired_difference([better], [base], k=10)["ndcg@10"]
    unpaired = np.hypot(*(rank_standard_errors(r, [10])["ndcg@10"] for r in (better, base)))
    assert d > 2 * se and se < unpaired / 2


def test_invalid_items_lower_the_valid_rate():
    m = ranking_metrics([[0, -1], [12, 1]], [0, 1], ks=[2], n_items=10)
    assert m["valid_rate"] == pytest.approx(0.5)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 ranked lists for 1 targets"):
        target_ranks([[1], [2]], [1])


ranks_st = st.lists(st.integers(min_value=-1, max_value=30), min_size=1, max_size=50).map(np.array)


@given(ranks_st, st.integers(min_value=1, max_value=30))
def test_metric_bounds_and_monotonicity(ranks, k):
    assert 0.0 <= ndcg(ranks, k) <= hit_rate(ranks, k) <= 1.0
    assert hit_rate(ranks, k) <= hit_rate(ranks, k + 1)
    assert ndcg(ranks, k) <= ndcg(ranks, k + 1)
    assert 0.0 <= mrr(ranks) <= 1.0
    # hr@1 == ndcg@1 == share of rank-0 hits, and mrr is at least that
    assert hit_rate(ranks, 1) == pytest.approx(ndcg(ranks, 1))
    assert mrr(ranks) >= hit_rate(ranks, 1)


def test_popularity_counts_only_training_targets_and_excludes_seen():
    train = pa.table({"items": [[0, 1, 1], [2, 1]], "loss_from": [1, 1]})
    counts = item_counts(train, n_items=4)
    assert counts.tolist() == [0, 3, 0, 0]
    order = popularity_ranking(counts)
    assert order[:2].tolist() == [1, 0]  # ties broken by item index
    recs = recommend_popular(order, 2, [{1}, set()], 2)
    assert recs == [[0, 2], [1, 0]]
    assert recommend_popular(order, 2, None, 3) == [[1, 0]] * 3
