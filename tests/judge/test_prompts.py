"""The prompt/parse module: templates, hashes, slots, truncation, and scores from logits/logprobs."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.config import JudgeSection
from sgrec_ray.judge import prompts
from sgrec_ray.judge.engines import load_tokenizer, resolve_model
from sgrec_ray.judge.prompts import ItemTexts, PromptBuilder, PromptSpec

ITEMS = pa.table(
    {
        "item_idx": pa.array(range(5), pa.int32()),
        "item_id": ["m0", "m1", "m2", "m3", "m4"],
        "title": ["Toy Story (1995)", "Heat (1995)", None, "Alien (1979)", "Babe (1995)"],
        "text": ["Toy Story (1995). Genres: Animation", "", "", "A crew meets a creature.", "Babe"],
        "genres": ["Animation, Comedy", "Action", None, "Sci-Fi, Horror", None],
    }
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model(JudgeSection()))


def builder(tokenizer, **kw) -> PromptBuilder:
    return PromptBuilder(tokenizer, PromptSpec(**kw), ItemTexts(ITEMS))


def test_prompt_hash_tracks_what_changes_the_prompt():
    base = PromptSpec()
    assert base.prompt_hash == PromptSpec().prompt_hash  # deterministic across processes
    assert len({base.prompt_hash, PromptSpec(scale=7).prompt_hash}) == 2
    assert PromptSpec(aspects=("profile", "future")).prompt_hash != base.prompt_hash
    assert PromptSpec(long_history=3).prompt_hash != base.prompt_hash
    with pytest.raises(ValueError, match="allowed"):
        PromptSpec(aspects=("taste",))
    with pytest.raises(ValueError, match=r"2\.\.9"):
        PromptSpec(scale=10)


def test_scaffold_offsets_point_at_the_digits():
    text, offsets = prompts.scaffold(PromptSpec(), [1, 4, 5])
    assert text == "Profile: 1\nFuture: 4\nNovelty: 5"
    assert [text[o] for o in offsets] == ["1", "4", "5"]
    assert prompts.scaffold(PromptSpec(scale=5))[0].count(": 3") == 3  # neutral placeholder


def test_item_texts_fall_back_and_count_missing():
    texts = ItemTexts(ITEMS)
    assert texts.short[0] == "Toy Story (1995) [Animation, Comedy]"
    assert "Title: Heat (1995)" in texts.long[1] and "Description" not in texts.long[1]
    assert texts.missing.tolist() == [False, False, True, False, False]
    assert "m2" in texts.short[2] and "no title or description" in texts.long[2]
    assert "Description: A crew meets a creature." in texts.long[3]


def test_profile_and_empty_history_are_stated():
    body = prompts.user_text({"age": 24, "gender": "M", "zip": None}, [], [])
    assert "Profile: age 24, gender M." in body
    assert body.count(prompts.NO_HISTORY) == 2
    assert "no demographics" in prompts.user_text(None, ["A"], ["B"])


def test_builder_slots_hold_the_placeholder_digit(tokenizer):
    b = builder(tokenizer)
    user = b.encode_user({"age": 30}, [0, 1, 3])
    cand = b.encode_candidate(4)
    placeholder = b.score_ids[b.spec.placeholder - 1]
    assert len(cand.slots) == 3 and all(cand.ids[s] == placeholder for s in cand.slots)
    assert cand.slots[-1] == len(cand.ids) - 1  # nothing after the last slot is scored
    # Prefix and suffix tokenised apart equal the whole prompt tokenised at once (vLLM sees that).
    whole = tokenizer(user.text + cand.text, add_special_tokens=False)["input_ids"]
    assert whole[: len(user.ids) + len(cand.ids)] == user.ids + cand.ids
    assert "Toy Story" in user.text and "Babe" not in user.text and "Babe (1995)" in cand.text
    assert user.text.index("## User") < len(user.text) and "## Candidate" in cand.text


def test_context_only_when_enabled(tokenizer):
    plain = builder(tokenizer).encode_user(None, [0], timestamp=0)
    ctx = builder(tokenizer, aspects=("profile", "context")).encode_user(None, [0], timestamp=0)
    assert "Time of request" not in plain.text
    assert "Time of request: Thursday night (UTC)" in ctx.text


def test_long_history_is_truncated_oldest_first(tokenizer):
    items = pa.table(
        {
            "item_idx": pa.array(range(40), pa.int32()),
            "item_id": [str(i) for i in range(40)],
            "title": [f"A rather long movie title number {i} (1990)" for i in range(40)],
            "text": [""] * 40,
        }
    )
    spec = PromptSpec(long_history=30, recent_history=5, max_prompt_tokens=420)
    b = PromptBuilder(tokenizer, spec, ItemTexts(items))
    user = b.encode_user(None, list(range(40)))
    assert user.truncated and 0 < user.items_used < 35
    assert "number 39 " in user.text  # the newest item stays
    assert "number 5 " not in user.text  # beyond the window
    assert len(user.ids) + len(b.encode_candidate(0).ids) <= spec.max_prompt_tokens
    assert not b.encode_user(None, list(range(3))).truncated


def test_expected_score_basics():
    assert prompts.expected_score(np.zeros(5)) == pytest.approx(3.0)
    assert prompts.expected_score(np.array([0, 0, 0, 0, 50.0])) == pytest.approx(5.0)
    assert prompts.expected_score(np.array([-np.inf, 0, -np.inf, 0, -np.inf])) == pytest.approx(3.0)
    for bad, reason in [([np.nan, 0, 0], "non_finite"), ([np.inf, 0, 0], "non_finite")]:
        with pytest.raises(ValueError, match=reason):
            prompts.expected_score(np.array(bad))
    with pytest.raises(ValueError, match="no_score_token"):
        prompts.expected_score(np.full(5, -np.inf))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=9))
def test_expected_score_is_within_the_scale(logits):
    value = prompts.expected_score(np.array(logits))
    assert 1.0 - 1e-9 <= value <= len(logits) + 1e-9 and math.isfinite(value)


def test_scores_from_slots_names_the_failing_aspect():
    ok = prompts.scores_from_slots(np.zeros((2, 5)), ("profile", "future"))
    assert ok.status == "ok" and ok.scores == {"profile": 3.0, "future": 3.0}
    bad = prompts.scores_from_slots(np.array([[0.0] * 5, [np.nan] * 5]), ("profile", "future"))
    assert (bad.status, bad.reason, bad.scores) == ("failed", "non_finite_logits:future", {})


def test_logprob_dicts_in_every_shape_vllm_may_return():
    score_ids = [33, 34, 35]
    lp = [
        None,  # the first prompt token has no logprob
        {33: {"logprob": -0.1, "rank": 1}, 99: {"logprob": -3.0}},  # int keys, dict values
        {"34": -0.5, "35": -1.5},  # str keys (after a JSON round trip), bare floats
        [("35", {"logprob": -0.2}), ("7", None)],  # Arrow map: list of pairs
    ]
    out = prompts.slot_logits_from_logprob_dicts(lp, [1, 2, 3, 9], score_ids)
    assert out[0].tolist() == [-0.1, -np.inf, -np.inf]
    assert out[1].tolist() == [-np.inf, -0.5, -1.5]
    assert out[2].tolist() == [-np.inf, -np.inf, -0.2]
    assert np.isneginf(out[3]).all()  # position out of range: nothing known → fails later


def test_parse_scores_text():
    aspects = ("profile", "future", "novelty")
    text = "Sure!\nProfile: 4\n**Future**: 2\nnovelty - 5\n"
    assert prompts.parse_scores_text(text, aspects, 5) == {"profile": 4, "future": 2, "novelty": 5}
    assert prompts.parse_scores_text("Profile: 4\nFuture: 2", aspects, 5) is None
    assert prompts.parse_scores_text("Profile: 9\nFuture: 2\nNovelty: 1", aspects, 5) is None
    assert (
        prompts.first_sentence(" Fits the drama streak. More text\nnext")
        == "Fits the drama streak."
    )
