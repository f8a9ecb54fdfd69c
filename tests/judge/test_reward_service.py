"""The semantic reward service: cache keys, warm start, LRU, and the Ray actor pool with the real judge."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray.judge.aggregate import Aggregator, load_aggregator
from sgrec_ray.judge.reward_service import (
    RewardClient,
    RewardCore,
    start_reward_service,
)
from sgrec_ray.judge.rows import context_hash
from sgrec_ray.judge.stage import load_scores
from tests.judge import run_fixture, synthetic


@pytest.fixture
def aggregate_run(tmp_path_factory, ray_session):
    return run_fixture.aggregate_run(tmp_path_factory)


HISTORY = {"u000": [1, 2, 3], "u001": [4, 5]}


def test_context_hash_covers_exactly_the_prompt_window():
    base = context_hash("u", [1, 2, 3, 4], window=3)
    assert context_hash("u", [9, 2, 3, 4], window=3) == base  # item outside the window
    assert context_hash("u", [1, 2, 3, 5], window=3) != base
    assert context_hash("v", [1, 2, 3, 4], window=3) != base
    assert context_hash("u", [1, 2, 3, 4], window=3, timestamp=7) != base


def test_warm_start_keys_each_row_by_the_context_it_was_judged_in():
    """One item judged in two contexts (a candidate and a Stage B pair) fills two entries."""
    core = RewardCore(None, Aggregator.uniform(["profile"]), None, window=3, prompt_hash="h")
    early, late = [1, 2], [1, 2, 3, 4]
    scores = pa.table(
        {
            "user_id": ["u", "u", "u"],
            "item_idx": pa.array([7, 7, 8], pa.int32()),
            "context": [context_hash("u", early, 3), context_hash("u", late, 3), None],
            "prompt_hash": ["h", "h", "h"],
            "status": ["ok", "ok", "ok"],
            "profile": pa.array([2.0, 4.0, 5.0], pa.float32()),
        }
    )
    assert core.warm_start(scores) == 2  # the row without a context is skipped
    got = core.aspect_scores(["u", "u", "u"], [early, late, [9, 2, 3, 4]], [7, 7, 7])
    assert [None if v is None else v.tolist() for v in got] == [[2.0], [4.0], [4.0]]


def _core(ctx, cache_size: int = 100_000) -> RewardCore:
    agg = load_aggregator(ctx.path("aggregate", "model"))
    return RewardCore(
        None,
        agg,
        agg.featurizer(),
        window=ctx.cfg.judge.long_history + ctx.cfg.judge.recent_history,
        prompt_hash=synthetic.prompt_hash(ctx),
        cache_size=cache_size,
    )


def _ok_rows(ctx, user: str, n: int) -> pa.Table:
    import pyarrow.compute as pc

    scores = load_scores(ctx)
    mask = pc.and_(
        pc.equal(scores.column("user_id"), user), pc.equal(scores.column("status"), "ok")
    )
    return scores.filter(mask).slice(0, n)


@pytest.mark.integration
def test_core_serves_warm_cache_and_counts(aggregate_run):
    ctx, _ = aggregate_run
    core = _core(ctx)
    loaded = core.warm_start(load_scores(ctx))
    assert loaded > 0 and core.stats()["warm_started"] == loaded
    rows = _ok_rows(ctx, "u000", 3)
    items = rows.column("item_idx").to_pylist()
    got = core.score(["u000"] * 3 + ["u000"], [HISTORY["u000"]] * 4, [*items, 10_000])
    aspects = np.stack([rows.column(a).to_numpy() for a in synthetic.ASPECTS], axis=1)
    feats = core.featurizer.features(["u000"] * 3, [HISTORY["u000"]] * 3)
    expected = core.aggregator.holistic(feats, aspects)
    assert np.allclose(got[:3], expected, atol=1e-5)
    assert got[3] is None  # never judged, and no judge attached: the caller falls back
    stats = core.stats()
    assert (stats["calls"], stats["pairs"], stats["cache_hits"], stats["cache_misses"]) == (
        1,
        4,
        3,
        1,
    )
    assert stats["no_judge"] == 1 and stats["mean_latency_ms"] > 0
    # Another context for the same user is another cache key.
    assert core.score(["u000"], [[7, 8]], [items[0]]) == [None]


@pytest.mark.integration
def test_core_lru_evicts_oldest(aggregate_run):
    ctx, _ = aggregate_run
    core = _core(ctx, cache_size=2)
    core.warm_start(_ok_rows(ctx, "u000", 3))
    items = _ok_rows(ctx, "u000", 3).column("item_idx").to_pylist()
    assert core.stats()["cache_size"] == 2
    out = core.score(["u000"] * 3, [HISTORY["u000"]] * 3, items)
    assert out[0] is None and out[1] is not None and out[2] is not None


@pytest.mark.integration
def test_actor_pool_routes_by_user_from_warm_cache(aggregate_run):
    """Two cache-only actors warm-started from the judge scores: every user lands on one actor."""
    ctx, _ = aggregate_run
    cfg = copy.deepcopy(ctx.cfg)
    cfg.aggregate.service_cpus = 0.25
    client = start_reward_service(cfg, num_actors=2, with_judge=False)
    users = [f"u{k:03d}" for k in range(6)]
    items = [_ok_rows(ctx, u, 1).column("item_idx")[0].as_py() for u in users]
    got = client.score(users, [synthetic.SAMPLE_HISTORY] * 6, items)
    core = _core(ctx)
    core.warm_start(load_scores(ctx))
    assert np.allclose(got, core.score(users, [synthetic.SAMPLE_HISTORY] * 6, items))
    stats = client.stats()
    assert stats["actors"] == 2 and stats["cache_hits"] == 6 and stats["cache_misses"] == 0
    assert len({client._route(u) for u in users}) == 2  # both actors used


@pytest.mark.integration
@pytest.mark.slow  # ~58 s on 2 cores: `make test-slow` (CI) runs it
def test_actor_with_real_judge(aggregate_run):
    """The real Stage A judge in an actor: judged pairs score, repeats hit the cache."""
    ctx, _ = aggregate_run
    cfg = copy.deepcopy(ctx.cfg)
    cfg.aggregate.service_cpus = 0.5
    cfg.aggregate.service_warm_start = False
    client = start_reward_service(cfg, num_actors=1)
    assert isinstance(client, RewardClient)
    users, histories, items = ["u000", "u000", "u001"], [[1, 2, 3], [1, 2, 3], [4, 5]], [7, 8, 9]
    first = client.score(users, histories, items)
    assert all(isinstance(s, float) and 1.0 <= s <= cfg.judge.scale for s in first), first
    again = client.score(users, histories, items)
    assert again == first
    stats = client.stats()
    assert stats["judged"] == 3 and stats["cache_hits"] == 3 and stats["calls"] == 2
    assert stats["actors"] == 1
