"""Judge requests, results and score rows: the engine-free contract every engine shares.

:class:`JudgeRequest` in, :class:`JudgeResult` out, :func:`score_columns` in the
:func:`scores_schema` layout; :class:`JudgePrompts` turns requests into token ids with score slots.
Both engines (in-process transformers, ``scoring.Judge``; ``ray.data.llm`` + vLLM,
``vllm_engine``) import from here and never from each other, so the judge modules form no import
circle: ``rows`` ← ``engines`` ← ``scoring`` / ``vllm_engine`` ← ``checks`` ← ``stage``.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from sgrec_ray.config import JudgeSection
from sgrec_ray.judge.prompts import EncodedUser, ItemTexts, PromptBuilder, PromptSpec


class JudgeRequest(NamedTuple):
    """One pair to judge. ``history``: item_idx, oldest first; ``timestamp``: for the Context aspect."""

    user_id: str
    history: Sequence[int]
    item_idx: int
    timestamp: int | None = None


@dataclass(frozen=True)
class StageWork:
    """What the judge stage hands an engine (``JudgeEngine.stage_batches``): candidate chunks of
    whole users (``candidates.CANDIDATES`` columns) and what scoring them needs."""

    ctx: Any  # the run's RunContext (its config, its stage outputs)
    chunks: list[pa.Table]
    items: pa.Table  # the data stage's items
    users: pa.Table | None  # user features, when the data has them
    ref: Any  # engines.ModelRef of judge.model; None for an engine without a language model
    stand_in: Any = None  # a test seam (judge.engine=vllm: the fake engine stage); else unused


class JudgeResult(NamedTuple):
    status: str  # "ok" | "failed"
    reason: str | None  # why it failed; None when ok
    aspects: dict[str, float]  # expected score in [1, scale] per enabled aspect; {} when failed
    evidence: dict[str, str] | None  # one sentence per aspect when judge.evidence, else None
    truncated: bool  # history items were dropped to fit judge.max_prompt_tokens
    prompt_tokens: int


def context_hash(
    user_id: str, history: Sequence[int], window: int, timestamp: int | None = None
) -> str:
    """Hash of what the judge's prompt shows about the user (the last ``window`` items).

    The id of a judgement's context: score rows carry it, so one (user, item) judged in two
    contexts (a candidate row and a Stage B pair, or two pairs at different times) are two rows,
    and the reward service's cache keys on it.
    """
    shown = [int(i) for i in list(history)[-window:]] if window > 0 else []
    blob = f"{user_id}|{shown}|{timestamp}".encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def request_contexts(requests: Sequence[JudgeRequest], spec: PromptSpec) -> list[str]:
    """The :func:`context_hash` of each request as the prompt ``spec`` shows it (the time counts
    only when the Context aspect is on)."""
    window = spec.long_history + spec.recent_history
    timed = "context" in spec.aspects
    return [
        context_hash(str(r.user_id), r.history, window, r.timestamp if timed else None)
        for r in requests
    ]


def prompt_spec(cfg: JudgeSection) -> PromptSpec:
    return PromptSpec(
        tuple(cfg.aspects), cfg.scale, cfg.long_history, cfg.recent_history, cfg.max_prompt_tokens
    )


def scores_schema(aspects: Sequence[str]) -> pa.Schema:
    """Columns of ``<run>/judge/scores/``: one float32 column per enabled aspect."""
    return pa.schema(
        [
            ("user_id", pa.string()),
            ("item_idx", pa.int32()),
            ("context", pa.string()),  # context_hash of the history judged with
            ("origin", pa.string()),  # target | beam | hard | random | pair
            ("split", pa.string()),
            ("prompt_hash", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            *[(a, pa.float32()) for a in aspects],
            ("evidence", pa.string()),  # JSON {aspect: sentence}
            ("truncated", pa.bool_()),
            ("prompt_tokens", pa.int32()),
            ("model", pa.string()),
            ("adapter", pa.string()),
        ]
    )


def _user_features(users: pa.Table | None) -> dict[str, dict[str, Any]]:
    if users is None or "user_id" not in users.column_names:
        return {}
    rows = users.to_pylist()
    return {str(r.pop("user_id")): r for r in rows}


class JudgePrompts:
    """Requests → token ids with score slots; the engine-free half of the judge.

    Shared by :class:`Judge` (transformers, in-process) and the vLLM path, which only needs the
    tokenizer. Encoded user prefixes are cached (the reward service asks about the same users often).
    """

    def __init__(
        self, cfg: JudgeSection, tokenizer: Any, items: pa.Table, users: pa.Table | None = None
    ) -> None:
        self.spec = prompt_spec(cfg)
        self.items = ItemTexts(items)
        self.builder = PromptBuilder(tokenizer, self.spec, self.items)
        self.users = _user_features(users)
        self._prefixes: OrderedDict[tuple, EncodedUser] = OrderedDict()
        self._max_cached = 4096

    def user_key(self, r: JudgeRequest) -> tuple:
        """Requests with equal keys share a prompt prefix."""
        stamp = r.timestamp if "context" in self.spec.aspects else None
        return (str(r.user_id), tuple(int(x) for x in r.history), stamp)

    def encode_user(self, r: JudgeRequest) -> EncodedUser:
        key = self.user_key(r)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        user = self.builder.encode_user(self.users.get(key[0]), key[1], key[2])
        self._prefixes[key] = user
        if len(self._prefixes) > self._max_cached:
            self._prefixes.popitem(last=False)
        return user


def score_columns(
    requests: Sequence[JudgeRequest],
    results: Sequence[JudgeResult],
    aspects: Sequence[str],
    prompt_hash: str,
    model: str,
    adapter: str | None,
    contexts: Sequence[str],
) -> dict[str, Any]:
    """Results as columns of :func:`scores_schema` (origin/split null); engines share it.

    ``contexts``: each request's :func:`request_contexts` id (computed where the history is known).
    """
    n = len(requests)
    if len(contexts) != n:
        raise ValueError(f"score_columns: {len(contexts)} contexts for {n} requests")
    cols: dict[str, Any] = {
        "user_id": [r.user_id for r in requests],
        "item_idx": np.asarray([r.item_idx for r in requests], dtype=np.int32),
        "context": list(contexts),
        "origin": [None] * n,
        "split": [None] * n,
        "prompt_hash": [prompt_hash] * n,
        "status": [r.status for r in results],
        "reason": [r.reason for r in results],
    }
    for a in aspects:
        cols[a] = np.asarray(
            [r.aspects.get(a, np.nan) if r.status == "ok" else np.nan for r in results],
            dtype=np.float32,
        )
    cols["evidence"] = [json.dumps(r.evidence) if r.evidence else None for r in results]
    cols["truncated"] = [bool(r.truncated) for r in results]
    cols["prompt_tokens"] = np.asarray([r.prompt_tokens for r in results], dtype=np.int32)
    cols["model"] = [model] * n
    cols["adapter"] = [adapter] * n
    return cols


def requests_from_batch(batch: dict[str, Any]) -> list[JudgeRequest]:
    """Ray Data batch columns (user_id, history, item_idx[, timestamp]) → requests."""
    stamps = batch.get("timestamp")
    return [
        JudgeRequest(
            str(batch["user_id"][i]),
            [int(x) for x in batch["history"][i]],
            int(batch["item_idx"][i]),
            None if stamps is None or _is_null(stamps[i]) else int(stamps[i]),
        )
        for i in range(len(batch["user_id"]))
    ]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
