"""``judge.engine: embedding``: the scoring maths, failure rows, config rules, and the real path on
the tiny run's own all-MiniLM-L6-v2 embeddings (judge stage → Stage B → reward service)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.compute as pc
import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import ConfigError, load_config
from sgrec_ray.judge.checks import check_engine, preflight
from sgrec_ray.judge.embedding_engine import (
    EMBEDDING_MODEL_ID,
    EmbeddingJudge,
    aspect_scores,
    identity_hash,
    load_vectors,
    to_scale,
)
from sgrec_ray.judge.engines import JudgeSetupError, make_engine
from sgrec_ray.judge.rows import JudgeRequest
from sgrec_ray.runs import RunContext
from tests.conftest import REPO

ASPECTS = ["profile", "future", "novelty"]
R2 = np.sqrt(0.5)
# e0, e1, e2, (e0+e1)/√2, -e0
VECTORS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [R2, R2, 0], [-1, 0, 0]], np.float32)


def _cfg(*overrides: str):
    return load_config(REPO / "configs" / "tiny.yaml", ["judge.engine=embedding", *overrides])


def test_to_scale_maps_the_ends_onto_1_and_scale():
    assert to_scale(np.array([-1.0, 0.0, 1.0]), -1, 1, 5).tolist() == [1.0, 3.0, 5.0]
    assert to_scale(np.array([0.0, 2.0, 2.0 + 1e-9]), 0, 2, 7).tolist() == [1.0, 7.0, 7.0]


def test_aspect_scores_by_hand():
    # window = the last 2 items [0, 1] (long 1 + recent 1); recent = [1].
    got = aspect_scores(VECTORS, [2, 0, 1], [0, 4, 2], ASPECTS, 5, 1, 1)
    profile, future, novelty = got.T
    # profile: cos to the mean of e0, e1 (= e3): 1/√2, -1/√2, 0
    assert profile == pytest.approx([1 + 4 * (R2 + 1) / 2, 1 + 4 * (1 - R2) / 2, 3.0])
    # future: cos to e1: 0 for all three
    assert future == pytest.approx([3.0, 3.0, 3.0])
    # novelty: 1 - max cos to e0 / e1: an item in the window is least novel
    assert novelty == pytest.approx([1.0, 3.0, 3.0])


def test_scores_keep_the_order_of_the_similarities():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    history, items = [1, 2, 3, 4], list(range(10, 40))
    got = aspect_scores(vectors, history, items, ASPECTS, 5, 20, 2)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    profile_cos = unit[items] @ (unit[history].mean(0) / np.linalg.norm(unit[history].mean(0)))
    nearest = (unit[items] @ unit[history].T).max(1)
    assert np.array_equal(np.argsort(got[:, 0]), np.argsort(profile_cos))
    assert np.array_equal(np.argsort(got[:, 2]), np.argsort(-nearest))
    assert ((got >= 1) & (got <= 5)).all()


def test_judge_rows_and_failures():
    cfg = _cfg("judge.long_history=1", "judge.recent_history=1").judge
    judge = EmbeddingJudge(cfg, VECTORS)
    requests = [
        JudgeRequest("a", [2, 0, 1], 0),
        JudgeRequest("a", [2, 0, 1], 99),  # unknown candidate
        JudgeRequest("b", [], 0),  # nothing to compare with
        JudgeRequest("c", [77, 88], 0),  # only unknown history items
        JudgeRequest("d", [0, 1, 55], 4),  # an unknown history item is skipped
    ]
    results = judge.score(requests)
    assert [r.status for r in results] == ["ok", "failed", "failed", "failed", "ok"]
    assert results[1].reason == "unknown item_idx 99"
    assert results[2].reason.startswith("no_history") and results[3].reason.startswith("no_history")
    assert results[0].aspects == pytest.approx(
        dict(zip(ASPECTS, aspect_scores(VECTORS, [0, 1], [0], ASPECTS, 5, 1, 1)[0], strict=True))
    )
    assert results[4].aspects == pytest.approx(
        {"profile": 1 + 4 * (1 - R2) / 2, "future": 3.0, "novelty": 3.0}
    )
    cols = judge.rows(requests, results)
    assert cols["model"] == [EMBEDDING_MODEL_ID] * 5 and cols["adapter"] == [None] * 5
    assert np.isnan(cols["profile"][1]) and cols["status"][4] == "ok"


def test_identity_hash_follows_what_decides_the_scores():
    cfg = _cfg().judge
    base = identity_hash(cfg, VECTORS)
    assert identity_hash(cfg, VECTORS.copy()) == base
    assert identity_hash(cfg, VECTORS * 2) != base  # other embeddings: re-score on resume
    assert identity_hash(_cfg("judge.scale=7").judge, VECTORS) != base
    assert identity_hash(_cfg("judge.recent_history=3").judge, VECTORS) != base


def test_config_rules_and_checks():
    assert preflight(_cfg().judge) is None  # no model to resolve
    for bad in (
        ["judge.aspects=[profile,context]"],
        ["judge.adapter=/x"],
        ["judge.evidence=true"],
        ["judge.long_history=0", "judge.recent_history=0"],
    ):
        with pytest.raises(ConfigError, match="engine embedding"):
            check_engine(_cfg(*bad))  # the engine's rules: run by every stage check using it
    with pytest.raises(JudgeSetupError, match="no language model"):
        make_engine(_cfg().judge)
    with pytest.raises(ValueError, match="cannot score aspects"):
        EmbeddingJudge(
            load_config(REPO / "configs" / "tiny.yaml", ["judge.aspects=[context]"]).judge, VECTORS
        )


def test_a_judge_without_beams_does_not_wait_for_sft():
    assert "sft" in pipeline.stage_needs("judge", _cfg())
    assert "sft" not in pipeline.stage_needs("judge", _cfg("judge.n_beams=0"))


# --------------------------------------------------------------------------------------------
# The real path on the tiny run's embeddings

STAGE_B = [  # run_fixture's small Stage B: 2 fractional-CPU workers, a dozen epochs
    "aggregate.num_workers=2",
    "aggregate.cpus_per_worker=0.5",
    "aggregate.epochs=12",
    "aggregate.batch_size=128",
    "aggregate.hidden=16",
]


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory, tiny_run) -> RunContext:
    """A copy of the tiny run with judge (engine embedding, all 80 users) and aggregate finished."""
    root = tmp_path_factory.mktemp("embedding_judge") / "runs"
    shutil.copytree(storage.normalize(tiny_run.run_uri), root / tiny_run.cfg.run.name)
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"run.storage={root}", "judge.engine=embedding", "judge.max_users=null", *STAGE_B],
    )
    ctx = RunContext(cfg)
    pipeline.run_stage(ctx, "judge")
    pipeline.run_stage(ctx, "aggregate")
    return ctx


@pytest.mark.integration
def test_judge_stage_scores_every_candidate_on_the_llm_scale(embedding_run):
    from sgrec_ray.judge.stage import load_scores

    ctx = embedding_run
    scores = load_scores(ctx)
    metrics = ctx.manifest("judge")["metrics"]
    assert metrics["engine"] == "embedding" and metrics["model"] == EMBEDDING_MODEL_ID
    assert metrics["users"] == 80 and metrics["pairs"] == scores.num_rows
    ok = scores.filter(pc.equal(scores.column("status"), "ok"))
    assert ok.num_rows == scores.num_rows - metrics["failed"] > scores.num_rows // 2
    # Only pair items judged in an empty context fail (a user with no event before the pair):
    # the user's own candidates always have the history they were drawn from.
    failed = scores.filter(pc.not_equal(scores.column("status"), "ok"))
    assert set(failed.column("origin").to_pylist()) <= {"pair"}
    assert set(metrics["failed_by_reason"]) <= {"no_history: no known history item to compare with"}
    for a in ASPECTS:
        values = ok.column(a).to_numpy()
        assert ((values >= 1) & (values <= 5)).all() and values.std() > 0
    assert set(scores.column("prompt_hash").to_pylist()) == {metrics["prompt_hash"]}
    # The true next item is closer to the user's history than a random film, more often than not.
    by_origin = metrics["score_mean_by_origin"]
    assert by_origin["target"]["profile"] > by_origin["random"]["profile"]
    # Resuming the finished attempt scores nothing twice (same identity hash on every row).
    from sgrec_ray.data.schema import ITEMS_FILE
    from sgrec_ray.judge.stage import CANDIDATES_FILE, judge_pending

    candidates = storage.read_table(ctx.path("judge", CANDIDATES_FILE))
    items = storage.read_table(ctx.path("data", ITEMS_FILE))
    stats = judge_pending(ctx, candidates, items, None, None)
    assert (stats["judged_pairs"], stats["resumed_pairs"]) == (0, scores.num_rows)


@pytest.mark.integration
def test_stage_b_and_the_quality_table_take_embedding_scores(embedding_run):
    from sgrec_ray.judge.quality import render_markdown, report_section

    section = report_section(embedding_run)
    auc = section["pair_auc"]
    assert {*ASPECTS, "uniform", "learned"} <= set(auc)
    assert all(0 <= auc[k] <= 1 for k in auc if auc[k] is not None)
    md = render_markdown(section, {})
    assert "`embedding:sid` (embedding, cosine scoring)" in md and "| learned |" in md


@pytest.mark.integration
def test_reward_service_scores_with_the_embedding_judge(embedding_run):
    from sgrec_ray.judge.reward_service import build_core, start_reward_service
    from sgrec_ray.judge.stage import load_scores

    ctx = embedding_run
    cfg = ctx.cfg
    core = build_core(cfg)
    assert core.stats()["warm_started"] > 0  # the stage's rows, same identity hash
    vectors = load_vectors(ctx)
    history, items = [3, 10, 25, 40], [0, 7, 99]
    got = core.score(["u-new"] * 3, [history] * 3, items)
    j = cfg.judge
    aspects = aspect_scores(
        vectors, history, items, j.aspects, j.scale, j.long_history, j.recent_history
    )
    feats = core.featurizer.features(["u-new"] * 3, [history] * 3)
    assert np.allclose(got, core.aggregator.holistic(feats, aspects.astype(np.float32)), atol=1e-5)
    assert core.stats()["judged"] == 3 and core.stats()["judge_failed"] == 0
    assert core.score(["u-new"], [[]], [0]) == [None]  # no history: A2PO falls back to business
    # The Ray actor pool A2PO calls, same scores.
    client = start_reward_service(cfg, num_actors=1)
    assert np.allclose(client.score(["u-new"] * 3, [history] * 3, items), got, atol=1e-5)
    assert load_scores(ctx).num_rows > 0
