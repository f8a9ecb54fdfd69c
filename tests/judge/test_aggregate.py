"""Stage B: the pure objectives, the weight model, and the aggregate stage on a synthetic run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray import storage
from sgrec_ray.judge.aggregate import (
    OBJECTIVES,
    Aggregator,
    AspectWeightNet,
    PairBatch,
    bradley_terry,
    get_objective,
    group_advantages,
    group_relative,
    load_aggregator,
    pair_rewards,
)
from sgrec_ray.judge.user_features import FeatureSpec, UserFeaturizer, fit_spec
from tests.judge import run_fixture, synthetic


@pytest.fixture
def aggregate_run(tmp_path_factory, ray_session):
    return run_fixture.aggregate_run(tmp_path_factory)


def _toy_batch(n_users: int = 4, pairs_per_user: int = 12, seed: int = 0) -> PairBatch:
    """Every user prefers by aspect 0: aspect 0 orders every pair right, aspects 1, 2 are noise."""
    g = torch.Generator().manual_seed(seed)
    p = n_users * pairs_per_user
    a_pref = torch.rand(p, 3, generator=g) * 4 + 1
    a_other = torch.rand(p, 3, generator=g) * 4 + 1
    a_pref[:, 0] = a_other[:, 0] + 0.5 + torch.rand(p, generator=g)
    return PairBatch(
        features=torch.ones(n_users, 2),
        user_index=torch.arange(n_users).repeat_interleave(pairs_per_user),
        a_pref=a_pref,
        a_other=a_other,
    )


def test_bradley_terry_values():
    s = torch.tensor([1.0, 2.0])
    assert bradley_terry(s, s).item() == pytest.approx(math.log(2))
    loss = bradley_terry(torch.tensor([3.0]), torch.tensor([1.0]), beta=2.0)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-4.0))))
    # Finite for huge margins (log-sigmoid, not log of sigmoid).
    assert torch.isfinite(bradley_terry(torch.tensor([-1e4]), torch.tensor([1e4])))


def test_pair_rewards_share_of_user_pairs_ordered():
    batch = PairBatch(
        features=torch.ones(2, 1),
        user_index=torch.tensor([0, 0, 1]),
        a_pref=torch.tensor([[5.0, 1.0], [4.0, 1.0], [1.0, 5.0]]),
        a_other=torch.tensor([[1.0, 5.0], [1.0, 3.0], [5.0, 1.0]]),
    )
    weights = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.5, 0.5]]])  # [U=2, G=2, A=2]
    rewards = pair_rewards(weights, batch)
    # user 0: aspect-0 weights order both pairs; aspect-1 weights neither. user 1: 0, and a tie = 0.
    assert rewards.tolist() == [[1.0, 0.0], [0.0, 0.0]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=8))
def test_group_advantages_zero_mean_and_zero_when_constant(values):
    rewards = torch.tensor([values, [0.3] * len(values)])
    adv = group_advantages(rewards)
    assert adv.mean(dim=1).abs().max() < 1e-4  # float32: a normalised group sums to ~0
    assert torch.all(adv[1] == 0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_weights_on_simplex(n_aspects, n_users, seed):
    torch.manual_seed(seed)
    net = AspectWeightNet(4, n_aspects, 8)
    torch.nn.init.normal_(net.out.weight, std=3.0)  # move away from the uniform start
    agg = Aggregator(net, {"aspects": [f"a{k}" for k in range(n_aspects)]})
    w = agg.weights(np.random.default_rng(seed).normal(size=(n_users, 4)) * 10)
    assert w.shape == (n_users, n_aspects)
    assert np.all(w >= 0) and np.allclose(w.sum(1), 1.0, atol=1e-5)


def test_holistic_shapes():
    agg = Aggregator.uniform(["a", "b"])
    feats = np.ones((2, 3), np.float32)
    assert agg.holistic(feats, np.array([[1.0, 3.0], [2.0, 2.0]])).tolist() == [2.0, 2.0]
    assert agg.holistic(feats, np.ones((2, 5, 2))).shape == (2, 5)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_objectives_learn_the_informative_aspect(objective):
    """A few hundred steps of plain torch: both objectives move w toward the aspect that ranks."""
    from sgrec_ray.config import AggregateSection

    torch.manual_seed(0)
    cfg = AggregateSection(objective=objective, group_size=8, concentration=10.0)
    batch = _toy_batch()
    net = AspectWeightNet(2, 3, 8)
    optim = torch.optim.Adam(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        logits, beta = net(batch.features)
        loss = get_objective(objective)(logits, beta, batch, cfg, gen)
        optim.zero_grad()
        loss.backward()
        optim.step()
    w = torch.softmax(net(batch.features)[0], -1).detach()
    assert w[:, 0].min() > 0.6, w


def test_group_relative_reproducible_with_generator():
    batch = _toy_batch()
    logits = torch.zeros(4, 3, requires_grad=True)
    a = group_relative(logits, batch, 6, 20.0, torch.Generator().manual_seed(1))
    b = group_relative(logits, batch, 6, 20.0, torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def test_unknown_objective_names_the_known_ones():
    with pytest.raises(ValueError, match="bradley_terry"):
        get_objective("nope")


def test_featurizer_layout(tmp_path):
    import pyarrow as pa

    users = pa.table(
        {
            "user_id": ["a", "b"],
            "age": pa.array([20, 40], pa.int32()),
            "gender": ["M", None],
            "zip_code": [str(k) for k in range(2)],
        }
    )
    spec = fit_spec(users, embedding_dim=2, max_history=2)
    spec.categorical["zip_code"] = []  # as if it had too many values
    spec = fit_spec(users.drop_columns(["zip_code"]), 2, 2)
    assert spec.categorical == {"gender": ["M"]} and list(spec.numeric) == ["age"]
    assert spec.n_features == 1 + 2 + 1 + 1
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], np.float32)
    feats = UserFeaturizer(spec, emb, users).features(["a", "b", "new"], [[2, 0, 1], [], [0]])
    assert feats[0].tolist() == [1.0, 0.5, 0.5, 1.0, -1.0]  # last 2 items, M, (20-30)/10
    assert feats[1].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]  # no history, gender missing
    assert feats[2].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]  # unknown user: no demographics
    assert FeatureSpec.from_json(spec.to_json()) == spec


# --------------------------------------------------------------------------------------------
# The stage, on a synthetic run (Ray Train, 2 workers)


@pytest.mark.integration
@pytest.mark.slow  # ~50 s on 2 cores: `make test-slow` (CI) runs it
def test_stage_trains_and_beats_uniform(aggregate_run):
    ctx, manifest = aggregate_run
    m = manifest["metrics"]
    auc = m["pair_auc"]
    assert set(auc) == {*synthetic.ASPECTS, "uniform", "learned"}
    # The synthetic truth is gender-conditional: one global weighting cannot fit both halves.
    assert auc["learned"] > auc["uniform"] + 0.05, auc
    assert auc["learned"] > max(auc[a] for a in synthetic.ASPECTS), auc
    assert m["pairs"]["train"] > 0 and m["pairs"]["heldout"] > 0
    assert m["pairs"]["skipped"] == sum(m["pairs"]["skipped_by_reason"].values()) > 0
    before = m["pairs"]["before_scores"]
    assert m["pairs"]["train"] + m["pairs"]["heldout"] + m["pairs"]["skipped"] == sum(
        before.values()
    )
    assert m["train"]["num_workers"] == 2 and m["train"]["final"]["epoch"] == 11

    agg = load_aggregator(ctx.path("aggregate", "model"))
    assert agg.aspects == synthetic.ASPECTS
    feats = agg.featurizer().features(["u000", "u001"], [[1, 2, 3], [4, 5]])
    w = agg.weights(feats)
    assert np.allclose(w.sum(1), 1.0, atol=1e-5)
    assert w[0, 0] > w[0, 2] and w[1, 2] > w[1, 0]  # M → profile, F → novelty
    pairs = storage.read_table(ctx.path("aggregate", "pairs.parquet"))
    assert set(pairs.column("scores").to_pylist()) >= {"ok"}
    assert pairs.num_rows == sum(before.values())  # skipped pairs are kept, with the reason


@pytest.mark.integration
@pytest.mark.slow  # ~62 s on 2 cores: `make test-slow` (CI) runs it
def test_group_relative_under_ray_train_and_resume(tmp_path, ray_session):
    """The paper's objective through TorchTrainer (2 ranks); a second fit of the same run name
    resumes from its checkpoint instead of training again."""
    from sgrec_ray.config import AggregateSection
    from sgrec_ray.judge.aggregate import pack_training_data, train_aggregator

    batch = _toy_batch(n_users=6, pairs_per_user=10)
    users = [f"u{k}" for k in batch.user_index.tolist()]
    feats = {f"u{k}": np.ones(2, np.float32) for k in range(6)}
    data = pack_training_data(users, batch.a_pref.numpy(), batch.a_other.numpy(), feats)
    cfg = AggregateSection(
        objective="group_relative", epochs=2, num_workers=2, cpus_per_worker=0.5, batch_size=20
    )
    spec = {"aspects": ["a", "b", "c"], "hidden": cfg.hidden, "features": {}}
    _, history = train_aggregator(data, cfg, spec, str(tmp_path), "gr", seed=0)
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(np.isfinite(h["loss"]) for h in history)
    _, again = train_aggregator(data, cfg, spec, str(tmp_path), "gr", seed=0)
    assert again == history
