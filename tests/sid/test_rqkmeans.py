"""RQ-KMeans and collision resolution: pure, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sgrec_ray.config import SidSection
from sgrec_ray.sid.rqkmeans import (
    MINIBATCH_ABOVE,
    collision_rate,
    kmeans_method,
    resolve_collisions,
    rq_kmeans,
)

ML100K_ITEMS = 1682

# Small integer grids make duplicate points (and so collisions and K > distinct points) common.
embeddings = st.integers(1, 40).flatmap(
    lambda n: arrays(np.float32, (n, 3), elements=st.integers(-2, 2).map(float))
)


def _brute_collision_rate(codes: np.ndarray) -> float:
    rows = [tuple(r) for r in codes.tolist()]
    return sum(rows.count(r) > 1 for r in rows) / len(rows)


@settings(max_examples=30, deadline=None)
@given(emb=embeddings, levels=st.integers(1, 3), k=st.integers(1, 6), seed=st.integers(0, 3))
def test_rq_kmeans_properties(emb, levels, k, seed):
    rq = rq_kmeans(emb, levels, k, n_init=1, seed=seed)
    assert rq.codes.shape == (len(emb), levels) and rq.codes.dtype == np.int32
    assert rq.codes.min() >= 0 and rq.codes.max() < k
    assert all(0 < u <= 1 for u in rq.utilisation)
    assert all(c <= min(k, len(emb)) for c in rq.clusters_fitted)
    # Same seed, same codes.
    np.testing.assert_array_equal(rq.codes, rq_kmeans(emb, levels, k, n_init=1, seed=seed).codes)

    resolved, report = resolve_collisions(rq.codes)
    assert len({tuple(r) for r in resolved.tolist()}) == len(emb)
    assert report.collision_rate_after == 0.0
    assert resolved[:, -1].max() < report.max_group_size
    assert report.collision_rate_before == pytest.approx(_brute_collision_rate(rq.codes))


small_codes = st.integers(1, 60).flatmap(
    lambda n: arrays(np.int32, (n, 2), elements=st.integers(0, 3))
)


@settings(max_examples=50, deadline=None)
@given(codes=small_codes)
def test_resolve_collisions_ranks_by_item_idx(codes):
    resolved, report = resolve_collisions(codes)
    np.testing.assert_array_equal(resolved[:, :2], codes)  # the L levels are kept as they are
    rows = [tuple(r) for r in codes.tolist()]
    for i, row in enumerate(rows):
        # The extra code = how many earlier items (smaller item_idx) share this L-level SID.
        assert resolved[i, 2] == rows[:i].count(row)
    assert report.max_group_size == max(rows.count(r) for r in rows)
    assert report.colliding_groups == sum(1 for r in set(rows) if rows.count(r) > 1)
    assert collision_rate(resolved) == 0.0


def test_no_collisions_still_appends_a_level_of_size_one():
    codes = np.array([[0, 1], [1, 0], [1, 1]], dtype=np.int32)
    resolved, report = resolve_collisions(codes)
    assert resolved.shape == (3, 3) and (resolved[:, 2] == 0).all()
    assert report.max_group_size == 1 and report.collision_rate_before == 0.0


def test_separated_blobs_get_one_first_level_code_each():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 8) * 10
    emb = np.concatenate([c + rng.normal(scale=0.1, size=(25, 8)) for c in centers])
    rq = rq_kmeans(emb, levels=2, codes=4, n_init=2, seed=0)
    first = rq.codes[:, 0].reshape(4, 25)
    assert all(len(set(row)) == 1 for row in first)  # each blob is one code
    assert len(set(first[:, 0])) == 4  # and blobs get different codes
    assert rq.utilisation[0] == 1.0
    # Residual quantisation: each level explains part of what the previous one left.
    assert rq.quant_error[1] < rq.quant_error[0] < 0.1 * 8


def test_more_codes_than_items_and_identical_items():
    same = np.ones((5, 4), dtype=np.float32)
    rq = rq_kmeans(same, levels=3, codes=8)
    assert (rq.codes == 0).all() and rq.clusters_fitted == [1, 1, 1]
    few = np.arange(12, dtype=np.float32).reshape(3, 4)
    rq = rq_kmeans(few, levels=2, codes=64)
    assert len(set(rq.codes[:, 0])) == 3  # 3 distinct items → 3 clusters, not 64
    assert rq.utilisation[0] == pytest.approx(3 / 64)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        rq_kmeans(np.zeros((0, 3)), 2, 4)
    with pytest.raises(ValueError):
        rq_kmeans(np.zeros((3, 3)), 0, 4)
    with pytest.raises(ValueError):
        resolve_collisions(np.zeros((0, 2), dtype=np.int32))


def test_small_catalogues_keep_the_exact_path_so_ml100k_sids_are_unchanged():
    """``auto`` (the default) is the exact k-means up to the threshold: an ML-100k-sized
    catalogue gets bit-identical codes to an explicit ``exact`` run, which is the unchanged code
    every SID in docs/ came from."""
    cfg = SidSection()
    assert cfg.kmeans == "auto" and cfg.kmeans_minibatch_above == MINIBATCH_ABOVE
    assert kmeans_method(ML100K_ITEMS, cfg.kmeans, cfg.kmeans_minibatch_above) == "exact"
    assert kmeans_method(MINIBATCH_ABOVE + 1) == "minibatch"
    emb = np.random.default_rng(0).normal(size=(ML100K_ITEMS, 16)).astype(np.float32)
    auto = rq_kmeans(emb, 3, 32, n_init=1, seed=0)
    exact = rq_kmeans(emb, 3, 32, n_init=1, seed=0, method="exact")
    np.testing.assert_array_equal(auto.codes, exact.codes)
    assert auto.quant_error == exact.quant_error
    # Below the threshold only when asked: the same items, mini-batch, give other codes.
    mini = rq_kmeans(emb, 3, 32, n_init=1, seed=0, method="minibatch")
    assert not np.array_equal(mini.codes, exact.codes)


def test_minibatch_path_quantises_like_the_exact_one():
    rng = np.random.default_rng(1)
    centers = np.eye(4, 8) * 10
    emb = np.concatenate([c + rng.normal(scale=0.1, size=(300, 8)) for c in centers])
    rq = rq_kmeans(emb, levels=3, codes=4, n_init=2, seed=0, minibatch_above=100, batch_size=256)
    assert rq.codes.shape == (1200, 3) and rq.codes.dtype == np.int32
    assert rq.codes.min() >= 0 and rq.codes.max() < 4
    first = rq.codes[:, 0].reshape(4, 300)
    assert all(len(set(row)) == 1 for row in first) and len(set(first[:, 0])) == 4
    assert rq.quant_error[2] < rq.quant_error[1] < rq.quant_error[0] < 0.1 * 8
    again = rq_kmeans(emb, levels=3, codes=4, n_init=2, seed=0, minibatch_above=100, batch_size=256)
    np.testing.assert_array_equal(rq.codes, again.codes)  # same seed, same codes
    resolved, report = resolve_collisions(rq.codes)
    assert report.collision_rate_after == 0.0 and resolved.shape == (1200, 4)


def test_unknown_kmeans_method_names_the_choices():
    with pytest.raises(ValueError, match=r"choose one of \['auto', 'exact', 'minibatch'\]"):
        rq_kmeans(np.zeros((3, 3)), 1, 2, method="faiss")
