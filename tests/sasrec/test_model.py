"""SASRec: training targets, padding, scoring, recommendations and the business reward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.rl.rewards import RewardEnv, get_business_reward
from sgrec_ray.sasrec.model import (
    SasRec,
    SasRecConfig,
    load_sasrec_dir,
    pad_histories,
    save_sasrec,
    score_histories,
)
from sgrec_ray.sasrec.recommend import SasRecRecommender
from sgrec_ray.sasrec.stage import batch_tensors

N_ITEMS = 12


@pytest.fixture(scope="module")
def model() -> SasRec:
    torch.manual_seed(0)
    return SasRec(SasRecConfig(n_items=N_ITEMS, max_len=6, d_model=8, n_layer=1, n_head=2)).eval()


def test_batch_tensors_supervise_each_target_once():
    inputs, targets = batch_tensors([np.array([3, 4, 5, 6]), np.array([7, 8])], [2, 0], max_len=6)
    assert inputs.tolist() == [[4, 5, 6], [8, 0, 0]]  # ids are item_idx + 1, right-padded
    # Row 0: loss_from 2 → only items 5 and 6 are targets (3 and 4 belong to an earlier window).
    assert targets.tolist() == [[-100, 5, 6], [8, -100, -100]]
    # Longer than the model: the newest targets are kept.
    inputs, targets = batch_tensors([np.arange(10)], [1], max_len=4)
    assert inputs.tolist() == [[6, 7, 8, 9]] and targets.tolist() == [[6, 7, 8, 9]]


def test_scores_depend_only_on_the_real_items(model):
    seq, last = pad_histories([[1, 2, 3], [3], []], max_len=6)
    assert seq.tolist() == [[2, 3, 4], [4, 0, 0], [0, 0, 0]] and last.tolist() == [2, 0, 0]
    scores = score_histories(model, [[1, 2, 3], [3], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert scores.shape == (3, N_ITEMS)
    # Padding after a history changes nothing (causal attention, right padding).
    alone = score_histories(model, [[3]])
    np.testing.assert_allclose(scores[1], alone[0], rtol=1e-5, atol=1e-5)
    # A history longer than max_len is cut to its newest items.
    np.testing.assert_allclose(
        scores[2], score_histories(model, [[3, 4, 5, 6, 7, 8]])[0], rtol=1e-5, atol=1e-5
    )


def test_save_and_load_round_trip(model, tmp_path):
    save_sasrec(model, str(tmp_path), {"epoch": 3})
    loaded, meta = load_sasrec_dir(str(tmp_path))
    assert meta == {"epoch": 3}
    np.testing.assert_array_equal(
        score_histories(model, [[1, 2]]), score_histories(loaded, [[1, 2]])
    )


def test_recommender_ranks_by_score_and_excludes(model):
    rec = SasRecRecommender(model)
    scores = score_histories(model, [[1, 2, 3]])[0]
    got = rec.recommend([[1, 2, 3]], k=5)[0]
    assert [i for i, _ in got] == np.argsort(-scores, kind="stable")[:5].tolist()
    excluded = rec.recommend([[1, 2, 3]], k=N_ITEMS, exclude=[{1, 2, 3}])[0]
    assert len(excluded) == N_ITEMS - 3 and not {1, 2, 3} & {i for i, _ in excluded}


def test_sasrec_reward_is_the_models_next_item_probability(model):
    rec = SasRecRecommender(model)
    items = np.array([[0, 5, 7], [2, 3, 4]])
    reward = get_business_reward("sasrec")(
        items, np.array([0, 2]), RewardEnv([[1], [4, 5]], sasrec=rec)
    )
    probs = torch.softmax(torch.from_numpy(score_histories(model, [[1], [4, 5]])).double(), -1)
    np.testing.assert_allclose(reward, np.take_along_axis(probs.numpy(), items, 1), rtol=1e-6)
    with pytest.raises(ValueError, match="--stages sasrec"):
        get_business_reward("sasrec")(items, np.array([0, 2]), RewardEnv([[1], [4, 5]]))
