"""The business ranker: AUC helper, leakage-free rows, and a real Ray Train run on tiny."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray.rl.ranker import auc, build_rows, item_values, load_ranker


def test_auc_known_values_ties_and_one_class():
    # 4 positive/negative pairs: 3 ordered right, 1 wrong -> 0.75; a tie counts one half.
    assert auc(np.array([0.0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0.0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert auc(np.array([0.0, 1.0]), np.array([0.9, 0.1])) == 0.0
    assert auc(np.ones(3), np.arange(3.0)) == 0.5  # one class only: chance, not an error


def _interactions() -> pa.Table:
    return pa.table(
        {
            "user_id": ["a"] * 4 + ["b"] * 3,
            "item_idx": pa.array([0, 1, 2, 3, 4, 5, 6], pa.int32()),
            "timestamp": pa.array(range(7), pa.int64()),
            "rating": pa.array([5, 2, 4, 5, 4, 1, 5], pa.float32()),
        }
    )


def test_rows_exclude_eval_targets_and_sample_unseen_negatives():
    train, held, log_pop = build_rows(
        _interactions(),
        n_items=20,
        exclude={("a", 3), ("b", 6)},
        positive_min_rating=4,
        negatives_per_positive=2,
        max_history=10,
        seed=0,
    )
    rows = list(zip(train["item"], train["label"], train["history"], strict=True))
    # a: events 0 (5★), 1 (2★) train, 2 (4★) held out; b: 4 train, 5 held out; 3 and 6 excluded.
    assert [i for i, lab, _ in rows if lab == 1] == [0, 4]
    assert (1, 0.0, [0]) in rows  # a 2★ rating is an observed non-click
    negatives = [i for i, lab, h in rows if lab == 0 and h == []]  # both positives are first events
    assert len(negatives) == 4
    # Rows come user by user (a, then b); negatives are never items the user logged, eval targets
    # (3 for a, 6 for b) included.
    assert not set(negatives[:2]) & {0, 1, 2, 3} and not set(negatives[2:]) & {4, 5, 6}
    assert held["item"][0] == 2 and held["history"][0] == [0, 1]
    assert log_pop[0] > 0 and log_pop[2] == 0  # held-out events do not count as popularity


def test_item_values_from_a_column_and_clear_error():
    from sgrec_ray.config import config_from_dict

    items = pa.table({"item_idx": pa.array([1, 0], pa.int32()), "price": [2.0, None]})
    cfg = config_from_dict({"ranker": {"value_column": "price"}})
    assert item_values(cfg, items).tolist() == [1.0, 2.0]  # sorted by item_idx; null → 1
    assert item_values(config_from_dict({}), items) is None
    with pytest.raises(ValueError, match="not a column"):
        item_values(config_from_dict({"ranker": {"value_column": "bid"}}), items)


@pytest.mark.integration
def test_ranker_trains_and_beats_random_and_popularity(rl_base):
    manifest = rl_base.require("ranker")
    m = manifest["metrics"]
    assert m["auc"] > 0.65 > m["random_auc"]
    assert m["auc"] > m["pop_auc"]
    ranker = load_ranker(manifest["outputs"]["model"])
    p = ranker.predict([[1, 2, 3], []], np.array([[4, 5, 6], [7, 8, 9]]))
    assert p.shape == (2, 3) and ((p >= 0) & (p <= 1)).all()
