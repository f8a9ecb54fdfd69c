"""The alignment math: reward, sampling, answer log-probs and held-out metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.align.objectives import (
    alignment_reward,
    answer_logp,
    point_metrics,
    sample_answers,
    target_levels,
)

SCALE = 5


def test_target_levels_round_halves_up_and_clip():
    assert target_levels([1.0, 2.5, 3.49, 4.5, 5.0], SCALE) == [1, 3, 3, 5, 5]


def test_reward_is_one_only_for_the_exact_label_and_falls_with_distance():
    levels = np.array([4, 2, 5])
    answers = np.array([[4, 2, 5], [3, 2, 5], [1, 2, 5], [1, 5, 1]])
    r = alignment_reward(answers, levels, SCALE, exact_weight=0.5)
    assert r[0] == pytest.approx(1.0)
    assert r[0] > r[1] > r[2] > r[3]
    # exact_weight 1: a near miss is worth as little as a far one on that aspect.
    r1 = alignment_reward(answers[:3], levels, SCALE, exact_weight=1.0)
    assert r1[1] == pytest.approx(r1[2]) == pytest.approx(2 / 3)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(1, SCALE), min_size=3, max_size=3),
    st.lists(st.lists(st.integers(1, SCALE), min_size=3, max_size=3), min_size=1, max_size=8),
    st.floats(0, 1),
)
def test_reward_is_in_unit_interval(levels, answers, w):
    r = alignment_reward(np.array(answers), np.array(levels), SCALE, w)
    assert ((r >= 0) & (r <= 1 + 1e-12)).all()


def test_sampling_follows_the_slot_distribution_and_logp_sums_aspects():
    probs = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0]])
    logp = torch.log(probs.clamp_min(1e-12))
    answers = sample_answers(logp, 2000, torch.Generator().manual_seed(0))
    assert answers.shape == (2000, 2)
    assert (answers[:, 0] == 4).all()
    assert set(answers[:, 1].tolist()) == {1, 2}
    assert abs((answers[:, 1] == 1).float().mean().item() - 0.5) < 0.05
    lp = answer_logp(logp, answers[:3])
    assert torch.allclose(lp, torch.full((3,), float(np.log(0.5))), atol=1e-5)


def test_point_metrics():
    predicted = np.array([[3.2, 1.6], [4.6, 2.4]])
    targets = np.array([[3.0, 2.0], [4.0, 2.0]])
    m = point_metrics(predicted, targets, ["profile", "future"], SCALE)
    # 3.2→3 ok, 1.6→2 ok, 4.6→5 vs 4 wrong, 2.4→2 ok
    assert m["point_acc"] == pytest.approx(0.75)
    assert m["per_aspect"]["profile"] == {"point_acc": 0.5, "mae": pytest.approx(0.4)}
    assert m["mae"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.4) / 4)
    assert point_metrics(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], SCALE)["point_acc"] is None
