"""The one prompt/parse module of the Personalized Semantic Judge (Stage A); every engine uses it.

Layout of a prompt, chosen for speed and stable scores:

    system     instructions + the aspect definitions           ┐ the same for every candidate of
    user       profile, long-term and recent history, context  ┘ a user: the shared *prefix*
    user       "## Candidate" + the candidate's text            ┐ per candidate: the *suffix*
    assistant  "Profile: 3\\nFuture: 3\\nNovelty: 3"             ┘ a teacher-forced scaffold

The score of an aspect is read at its digit *slot* in the scaffold: the next-token distribution
restricted to the digit tokens "1".."scale" gives an expected score (continuous, deterministic, never
unparsable). The digits written into the scaffold are a fixed neutral placeholder (the middle of the
scale), so one forward pass reads every aspect and a vLLM ``prompt_logprobs`` pass reads the very same
positions; the placeholder is identical for every candidate, so it cannot favour one over another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

PROMPT_VERSION = "psj-a/1"

# aspect name → (label written in the scaffold, what it measures)
ASPECTS: dict[str, tuple[str, str]] = {
    "profile": ("Profile", "fit with the user's long-term interests"),
    "future": ("Future", "fit with where the user's recent behaviour is heading"),
    "novelty": ("Novelty", "a useful discovery for the user rather than a repetition"),
    "context": ("Context", "fit with the time of the request"),
}

SYSTEM_TEMPLATE = (
    "You are a recommendation judge. You read a user's profile and history and one candidate "
    "item, and rate the candidate for this user on each aspect with a whole number from 1 (poor) "
    "to {scale} (excellent):\n{aspect_lines}\nAnswer with exactly one line per aspect, "
    'like "{example}".'
)
USER_TEMPLATE = (
    "## User\n{profile}\nLong-term interests (older items):\n{long_items}\n"
    "Recent behaviour (oldest first, newest last):\n{recent_items}\n{context}"
)
CANDIDATE_TEMPLATE = "## Candidate\n{candidate}"
NO_HISTORY = "(none: this user has no earlier interactions)"
MAX_CANDIDATE_CHARS = 400  # a long description is cut; the title and genres come first
_SENTINEL = "\x00CANDIDATE\x00"


class PromptError(ValueError):
    """The tokenizer cannot express the scaffold (e.g. it merges score digits with text)."""


@dataclass(frozen=True)
class PromptSpec:
    """Everything that changes the text of a prompt; its hash is stored with every output row."""

    aspects: tuple[str, ...] = ("profile", "future", "novelty")
    scale: int = 5
    long_history: int = 20
    recent_history: int = 5
    max_prompt_tokens: int = 768

    def __post_init__(self) -> None:
        unknown = [a for a in self.aspects if a not in ASPECTS]
        if unknown or not self.aspects:
            raise ValueError(f"judge.aspects {list(self.aspects)}: allowed {sorted(ASPECTS)}")
        if not 2 <= self.scale <= 9:
            raise ValueError(f"judge.scale {self.scale}: must be 2..9 (one digit token per score)")

    @property
    def placeholder(self) -> int:
        return (self.scale + 1) // 2

    @property
    def prompt_hash(self) -> str:
        blob = json.dumps(
            {
                "version": PROMPT_VERSION,
                "templates": [SYSTEM_TEMPLATE, USER_TEMPLATE, CANDIDATE_TEMPLATE, NO_HISTORY],
                "aspects": [(a, *ASPECTS[a]) for a in self.aspects],
                "scale": self.scale,
                "history": [self.long_history, self.recent_history, self.max_prompt_tokens],
                "max_candidate_chars": MAX_CANDIDATE_CHARS,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Text pieces (pure)


def system_text(spec: PromptSpec) -> str:
    lines = "\n".join(f"- {ASPECTS[a][0]}: {ASPECTS[a][1]}" for a in spec.aspects)
    return SYSTEM_TEMPLATE.format(
        scale=spec.scale, aspect_lines=lines, example=scaffold(spec, 4)[0]
    )


def scaffold(spec: PromptSpec, fill: int | Sequence[int] | None = None) -> tuple[str, list[int]]:
    """The assistant answer ``"Profile: d\\nFuture: d…"`` and the character offset of each digit."""
    fills = [spec.placeholder if fill is None else fill] * len(spec.aspects)
    if fill is not None and not isinstance(fill, int):
        fills = list(fill)
    text, offsets = "", []
    for i, (aspect, value) in enumerate(zip(spec.aspects, fills, strict=True)):
        text += ("\n" if i else "") + f"{ASPECTS[aspect][0]}: "
        offsets.append(len(text))
        text += str(int(value))
    return text, offsets


def format_profile(features: dict[str, Any] | None) -> str:
    """Demographics where present, e.g. ``"Profile: age 24, gender M, occupation technician."``."""
    parts = [
        f"{k.replace('_', ' ')} {v}"
        for k, v in (features or {}).items()
        if v is not None and str(v).strip() and k != "user_id"
    ]
    return f"Profile: {', '.join(parts)}." if parts else "Profile: no demographics known."


def format_items(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else NO_HISTORY


def format_context(timestamp: int | None) -> str:
    """The request time as words (day, part of day), for the Context aspect."""
    if timestamp is None:
        return "Time of request: unknown.\n"
    t = dt.datetime.fromtimestamp(int(timestamp), tz=dt.timezone.utc)
    part = ["night", "morning", "afternoon", "evening"][t.hour // 6]
    return f"Time of request: {t:%A} {part} (UTC).\n"


def user_text(
    profile: dict[str, Any] | None,
    long_items: Sequence[str],
    recent_items: Sequence[str],
    context: str = "",
) -> str:
    return USER_TEMPLATE.format(
        profile=format_profile(profile),
        long_items=format_items(long_items),
        recent_items=format_items(recent_items),
        context=context,
    )


class ItemTexts:
    """Per item_idx: a short line for histories and a longer candidate description.

    Items with no title and no text fall back to their id and say so (``missing[i]`` counts them).
    """

    def __init__(self, items: pa.Table) -> None:
        items = items.sort_by("item_idx")
        n = max(items.column("item_idx").to_pylist(), default=-1) + 1

        def col(name: str) -> list[Any]:
            if name in items.column_names:
                return items.column(name).to_pylist()
            return [None] * items.num_rows

        self.short = [""] * n
        self.long = [""] * n
        self.missing = np.zeros(n, dtype=bool)
        rows = zip(
            *(col(c) for c in ("item_idx", "item_id", "title", "genres", "text")), strict=True
        )
        for idx, item_id, title, genres, text in rows:
            title, genres, text = (_clean(v) for v in (title, genres, text))
            if not title and not text:
                self.missing[idx] = True
                self.short[idx] = f"item {item_id} (no title or description available)"
                self.long[idx] = self.short[idx]
                continue
            head = title or text[:80]
            self.short[idx] = f"{head} [{genres}]" if genres else head
            body = [f"Title: {title}" if title else "", f"Genres: {genres}" if genres else ""]
            if text and (not title or title not in text or len(text) > len(title) + 40):
                body.append(f"Description: {text}")
            self.long[idx] = _cut("\n".join(b for b in body if b), MAX_CANDIDATE_CHARS)


def _clean(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).strip() if value is not None else ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + " …"


# ---------------------------------------------------------------------------------------------
# Token-level prompts (needs the engine's tokenizer)


@dataclass
class EncodedUser:
    """The shared prefix of a user's prompts: token ids up to where the candidate starts."""

    ids: list[int]
    text: str
    truncated: bool  # history items were dropped (oldest first) to fit max_prompt_tokens
    items_used: int


@dataclass
class EncodedCandidate:
    """The per-candidate suffix; ``slots`` index its tokens that hold the aspect digits."""

    ids: list[int]
    text: str
    slots: list[int]


class PromptBuilder:
    """Turns (profile, history, candidate) into token ids with known score slots.

    The chat template is rendered once with a sentinel where the candidate goes and split there, so
    prefix and suffix are exact pieces of the template whatever the model family.
    """

    def __init__(self, tokenizer: Any, spec: PromptSpec, items: ItemTexts) -> None:
        self.tok, self.spec, self.items = tokenizer, spec, items
        messages = [
            {"role": "system", "content": system_text(spec)},
            {"role": "user", "content": _SENTINEL},
        ]
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        self._head, self._tail = rendered.split(_SENTINEL)
        self.score_ids = self._digit_ids()
        self._scaffold, self._offsets = scaffold(spec)
        # Token room kept for the suffix when truncating a history: the longest possible candidate.
        longest = CANDIDATE_TEMPLATE.format(candidate="x " * MAX_CANDIDATE_CHARS)
        self._reserve = min(len(self._encode(longest)), 160) + len(
            self._encode(self._tail + self._scaffold)
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _digit_ids(self) -> list[int]:
        ids = []
        for d in range(1, self.spec.scale + 1):
            tokens = self._encode(f"Score: {d}")
            if self.tok.decode(tokens[-1:]).strip() != str(d):
                raise PromptError(f"tokenizer does not give the digit {d} its own token")
            ids.append(tokens[-1])
        return ids

    def encode_user(
        self, profile: dict[str, Any] | None, history: Sequence[int], timestamp: int | None = None
    ) -> EncodedUser:
        """The prefix for a user; drops the oldest history items until it fits the token budget."""
        s = self.spec
        window = list(history)[-(s.long_history + s.recent_history) :]
        context = format_context(timestamp) if "context" in s.aspects else ""

        def build(drop: int) -> tuple[str, list[int]]:
            kept = window[drop:]
            n_recent = min(s.recent_history, len(kept))
            lines = [self.items.short[i] for i in kept]
            body = user_text(
                profile, lines[: len(lines) - n_recent], lines[len(lines) - n_recent :], context
            )
            text = self._head + body  # ends with one "\n": the suffix starts a new token
            return text, self._encode(text)

        budget = s.max_prompt_tokens - self._reserve
        text, ids = build(0)
        drop = 0
        if len(ids) > budget and window:
            lo, hi = (
                1,
                len(window),
            )  # smallest drop that fits (binary search: tokenising is the cost)
            while lo < hi:
                mid = (lo + hi) // 2
                if len(build(mid)[1]) <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            drop = lo
            text, ids = build(drop)
        return EncodedUser(ids, text, drop > 0, len(window) - drop)

    def encode_candidate(self, item_idx: int) -> EncodedCandidate:
        text = CANDIDATE_TEMPLATE.format(candidate=self.items.long[item_idx]) + self._tail
        start = len(text)
        text += self._scaffold
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = list(enc["input_ids"]), enc["offset_mapping"]
        slots = []
        for offset in self._offsets:
            pos = next((j for j, (a, b) in enumerate(spans) if a <= start + offset < b), None)
            if pos is None or ids[pos] != self.score_ids[self.spec.placeholder - 1]:
                raise PromptError("the score digit of the scaffold is not a token of its own")
            slots.append(pos)
        return EncodedCandidate(ids[: slots[-1] + 1], text, slots)

    def answer_ids(self, user: EncodedUser, item_idx: int, text: str) -> list[int]:
        """Prefix + candidate + an assistant answer starting with ``text`` (for generation)."""
        head = CANDIDATE_TEMPLATE.format(candidate=self.items.long[item_idx]) + self._tail
        return user.ids + self._encode(head + text)


# ---------------------------------------------------------------------------------------------
# Scores from logits / logprobs (shared by every engine)


@dataclass
class SlotScores:
    status: str  # "ok" | "failed"
    reason: str | None
    scores: dict[str, float]


def expected_score(logits: np.ndarray) -> float:
    """E[score] under softmax over the score tokens' logits (or logprobs) ``[scale]``.

    ``-inf`` marks a score token the engine did not return (vLLM's top-k); it gets probability 0.
    Raises ValueError for NaN/+inf, or when no score token has a finite value.
    """
    x = np.asarray(logits, dtype=np.float64)
    if np.isnan(x).any() or np.isposinf(x).any():
        raise ValueError("non_finite_logits")
    top = x.max()
    if not math.isfinite(top):
        raise ValueError("no_score_token")
    p = np.exp(x - top)
    return float((p * np.arange(1, len(x) + 1)).sum() / p.sum())


def scores_from_slots(slot_logits: np.ndarray, aspects: Sequence[str]) -> SlotScores:
    """``slot_logits`` [n_aspects, scale] → per-aspect expected scores, or a failure and its reason."""
    scores = {}
    for aspect, row in zip(aspects, slot_logits, strict=True):
        try:
            scores[aspect] = expected_score(row)
        except ValueError as err:
            return SlotScores("failed", f"{err}:{aspect}", {})
    return SlotScores("ok", None, scores)


def slot_logits_from_logprob_dicts(
    prompt_logprobs: Sequence[Any], positions: Sequence[int], score_ids: Sequence[int]
) -> np.ndarray:
    """vLLM-style ``prompt_logprobs`` (per position: {token_id: {"logprob": x} | x}) → [slots, scale].

    Score tokens missing from a position's top-k become ``-inf`` (probability 0).
    """
    out = np.full((len(positions), len(score_ids)), -np.inf)
    for i, pos in enumerate(positions):
        entry = prompt_logprobs[pos] if pos < len(prompt_logprobs) else None
        for key, value in _items(entry):
            tid = int(key)
            if tid in score_ids:
                lp = value.get("logprob") if isinstance(value, dict) else value
                out[i, score_ids.index(tid)] = np.nan if lp is None else float(lp)
    return out


def _items(entry: Any) -> list[tuple[Any, Any]]:
    if entry is None:
        return []
    if isinstance(entry, dict):  # Arrow structs fill the ids a row lacks with None
        return [(k, v) for k, v in entry.items() if v is not None]
    return [(k, v) for k, v in entry if v is not None]  # Arrow map columns arrive as pairs


def parse_scores_text(text: str, aspects: Sequence[str], scale: int) -> dict[str, float] | None:
    """Free-text answer ``"Profile: 4\\nFuture: 2…"`` → scores; None unless every aspect is there.

    The fallback for engines without logprobs (and the naive baseline of ``bench/judge.py``).
    """
    scores = {}
    for aspect in aspects:
        label = re.escape(ASPECTS[aspect][0])
        m = re.search(rf"(?im)^\W*{label}\W*\s*[:=\-]\s*\**\s*(\d+)", text)
        if m is None or not 1 <= int(m.group(1)) <= scale:
            return None
        scores[aspect] = float(m.group(1))
    return scores


def evidence_prompt(spec: PromptSpec, scores: dict[str, float], aspect: str) -> str:
    """Assistant text that states the scores and opens the rationale for ``aspect``."""
    filled = [min(spec.scale, max(1, round(scores[a]))) for a in spec.aspects]
    return (
        scaffold(spec, filled)[0]
        + f"\nWhy {ASPECTS[aspect][0]} {filled[spec.aspects.index(aspect)]}:"
    )


def first_sentence(text: str) -> str:
    text = text.strip().split("\n", 1)[0].strip()
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()
