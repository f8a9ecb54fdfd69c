"""Logprob scoring with the real default judge (SmolLM2-135M, loaded once), failure paths, engines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray.config import JudgeSection
from sgrec_ray.judge import engines
from sgrec_ray.judge.checks import preflight
from sgrec_ray.judge.engines import JudgeSetupError, resolve_model
from sgrec_ray.judge.rows import JudgeRequest, scores_schema
from sgrec_ray.judge.scoring import Judge

ITEMS = pa.table(
    {
        "item_idx": pa.array(range(6), pa.int32()),
        "item_id": [f"m{i}" for i in range(6)],
        "title": [
            "Toy Story (1995)",
            "Heat (1995)",
            "Casino (1995)",
            "Babe (1995)",
            None,
            "Alien (1979)",
        ],
        "text": ["", "", "", "", "", "A crew meets a creature."],
        "genres": ["Animation", "Action, Crime", "Crime, Drama", "Children's", None, "Sci-Fi"],
    }
)
USERS = pa.table({"user_id": ["u1"], "age": [24], "gender": ["M"], "occupation": ["technician"]})
CFG = JudgeSection(batch_size=4)
REQUESTS = [JudgeRequest("u1", [0, 1, 2], i) for i in (3, 4, 5)] + [JudgeRequest("u2", [], 1)]


@pytest.fixture(scope="module")
def engine():
    return engines.make_engine(CFG)


@pytest.fixture(scope="module")
def judge(engine):
    return Judge(CFG, ITEMS, USERS, engine=engine)


@pytest.fixture(scope="module")
def results(judge):
    return judge.score(REQUESTS)


def test_scores_are_continuous_in_range_and_deterministic(judge, results):
    assert [r.status for r in results] == ["ok"] * 4
    for r in results:
        assert set(r.aspects) == {"profile", "future", "novelty"}
        assert all(1.0 <= v <= 5.0 for v in r.aspects.values())
        assert r.evidence is None and not r.truncated and r.prompt_tokens > 50
    assert judge.score(REQUESTS) == results  # same batch, same numbers
    alone = judge.score(REQUESTS[:1])[0].aspects  # another batch shape: float noise only
    assert all(alone[k] == pytest.approx(v, abs=1e-4) for k, v in results[0].aspects.items())
    # Different candidates of the same user get different (continuous) scores.
    assert len({round(r.aspects["profile"], 6) for r in results[:3]}) == 3


def test_prefix_sharing_matches_full_prompts(judge, engine, results):
    engine.prefix_sharing = False
    try:
        plain = judge.score(REQUESTS[:3])
    finally:
        engine.prefix_sharing = True
    for a, b in zip(results[:3], plain, strict=True):
        for k in a.aspects:
            assert a.aspects[k] == pytest.approx(b.aspects[k], abs=1e-3)


def test_bad_pairs_become_failed_rows(judge, results):
    out = judge.score([REQUESTS[0], JudgeRequest("u1", [0], 99)])
    assert out[0].status == "ok"
    assert (out[1].status, out[1].reason) == ("failed", "unknown item_idx 99")


def test_nan_logits_fail_with_reason(judge, engine, monkeypatch):
    def nan_logits(prefix, suffixes, slots, score_ids):
        out = np.zeros((len(suffixes), len(slots[0]), len(score_ids)))
        out[0, 1] = np.nan
        return out

    monkeypatch.setattr(engine, "slot_logits", nan_logits)
    out = judge.score(REQUESTS[:2])
    assert (out[0].status, out[0].reason) == ("failed", "non_finite_logits:future")
    assert out[1].status == "ok" and out[1].aspects["profile"] == pytest.approx(3.0)


def test_engine_errors_fail_the_group_not_the_batch(judge, engine, monkeypatch):
    def boom(prefix, suffixes, slots, score_ids):
        if len(suffixes) == 3:
            raise RuntimeError("out of memory")
        return np.zeros((len(suffixes), len(slots[0]), len(score_ids)))

    monkeypatch.setattr(engine, "slot_logits", boom)
    out = judge.score(REQUESTS)
    assert [r.status for r in out] == ["failed"] * 3 + ["ok"]
    assert out[0].reason == "engine_error: RuntimeError: out of memory"


def test_generate_mode_retries_then_fails(engine, monkeypatch):
    cfg = dataclasses.replace(CFG, scoring="generate", max_retries=1)
    judge = Judge(cfg, ITEMS, USERS, engine=engine)
    answers = iter(
        [
            ["Profile: 4\nFuture: 2\nNovelty: 5", "I like it", "no"],
            ["Profile: 1\nFuture: 1\nNovelty: 2", "?"],
        ]
    )
    calls = []

    def fake_generate(prompts, max_new_tokens, sample=False, seed=0, stop_at_newline=False):
        calls.append(sample)
        return next(answers)

    monkeypatch.setattr(engine, "generate", fake_generate)
    out = judge.score(REQUESTS[:3])
    assert calls == [False, True]  # greedy first, then one sampled retry for the unparsable two
    assert out[0].aspects == {"profile": 4.0, "future": 2.0, "novelty": 5.0}
    assert out[1].aspects == {"profile": 1.0, "future": 1.0, "novelty": 2.0}
    assert (out[2].status, out[2].reason) == ("failed", "unparsable_output after 2 attempts")


def test_evidence_is_one_sentence_per_aspect(engine):
    cfg = dataclasses.replace(CFG, evidence=True, evidence_max_tokens=6)
    out = Judge(cfg, ITEMS, USERS, engine=engine).score(REQUESTS[:1])
    assert out[0].status == "ok" and set(out[0].evidence) == {"profile", "future", "novelty"}
    assert all(isinstance(s, str) for s in out[0].evidence.values())


def test_ray_data_udf_columns(judge):
    batch = {
        "user_id": np.array(["u1", "u1"]),
        "history": [np.array([0, 1], np.int32), np.array([0, 1], np.int32)],
        "item_idx": np.array([3, 99], np.int32),
        "origin": np.array(["target", "random"]),
        "split": np.array(["valid", "valid"]),
        "timestamp": np.array([1, 2]),
    }
    out = judge(batch)
    table = pa.table(out).select(scores_schema(CFG.aspects).names).cast(scores_schema(CFG.aspects))
    row, bad = table.to_pylist()
    assert (
        row["status"] == "ok"
        and row["origin"] == "target"
        and row["prompt_hash"] == judge.prompt_hash
    )
    assert row["model"] == "smollm2-135m-gguf" and row["adapter"] is None and row["reason"] is None
    assert bad["status"] == "failed" and (bad["profile"] is None or np.isnan(bad["profile"]))


def test_missing_models_fail_early_with_the_key(tmp_path):
    for model, match in [
        (str(tmp_path / "nope"), "model folder not found"),
        (str(tmp_path / "x.gguf"), "GGUF file not found"),
        ("no-such-org/no-such-model", "not in the Hugging Face cache"),
    ]:
        with pytest.raises(JudgeSetupError, match=match) as err:
            resolve_model(JudgeSection(model=model))
        assert "judge.model" in str(err.value)
    with pytest.raises(JudgeSetupError, match=r"judge\.adapter"):
        preflight(JudgeSection(adapter=str(tmp_path / "lora")))
