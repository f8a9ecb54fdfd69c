"""``judge.engine: embedding``: aspect scores from the item text embeddings, with no LLM.

The proxy judge a public S-GRec reproduction used, here with the same contract as the LLM judge
(:class:`~sgrec_ray.judge.rows.JudgeRequest` in, :class:`~sgrec_ray.judge.rows.JudgeResult` out,
the same score columns on the same 1..scale), so Stage B, the judge-quality table and the A2PO
reward service take it unchanged. Two jobs: the baseline any LLM judge must beat in the
judge-quality table, and a semantic reward cheap enough to run A2PO at every rate on CPU
(microseconds per pair, against ~1 pair/s for the 135M LLM judge on this machine).

Over the window the LLM prompt shows (the last ``long_history + recent_history`` items), with the
sid stage's L2-normalised all-MiniLM-L6-v2 vectors of title + genres:

- **profile**: cosine similarity of the candidate to the mean of the window (long-term interests);
- **future**: cosine similarity to the mean of the last ``recent_history`` items (where recent
  behaviour is heading);
- **novelty**: cosine distance to the nearest window item (1 - max similarity): high when the
  candidate is unlike anything the user watched, lowest for an item already in the window.

Each cosine c ∈ [-1, 1] (distance d ∈ [0, 2]) maps linearly onto [1, scale]:
``1 + (scale - 1)(c + 1) / 2`` (``1 + (scale - 1) d / 2``), so the scores keep the order of the
similarities exactly. The Context aspect has no embedding reading (config_rules refuses it).
A pair fails, as with the LLM engines, when it cannot be scored: an unknown candidate, or no known
history item to compare with (``no_history``; the reward service then falls back to the business
reward for that group).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.config import JudgeSection
from sgrec_ray.data.schema import EMBEDDINGS_FILE, read_embeddings
from sgrec_ray.errors import UserError
from sgrec_ray.judge.rows import (
    JudgeRequest,
    JudgeResult,
    StageWork,
    prompt_spec,
    request_contexts,
    requests_from_batch,
    score_columns,
)

EMBEDDING_MODEL_ID = "embedding:sid"  # the model column of its rows: the sid stage's embeddings
VERSION = 1  # bump when the scoring below changes: old rows are then re-scored, never mixed in
ASPECTS = ("profile", "future", "novelty")  # the aspects this engine can score


def to_scale(x: np.ndarray, lo: float, hi: float, scale: int) -> np.ndarray:
    """Map values in [lo, hi] linearly onto [1, scale] (clipped against float rounding)."""
    return np.clip(1.0 + (scale - 1) * (np.asarray(x, np.float64) - lo) / (hi - lo), 1.0, scale)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    unit: np.ndarray = v / np.maximum(norm, 1e-12)
    return unit


def aspect_scores(
    vectors: np.ndarray,
    history: Sequence[int],
    items: Sequence[int],
    aspects: Sequence[str],
    scale: int,
    long_history: int,
    recent_history: int,
) -> np.ndarray:
    """Aspect scores ``[len(items), len(aspects)]`` in [1, scale] for one user.

    Args:
        vectors: item embeddings ``[n_items, dim]``, row = item_idx; only the rows used are read
            and normalised (a catalogue of millions costs nothing extra per call).
        history: the user's items, oldest first; only valid item_idx are used, and the caller
            guarantees at least one and that every candidate in ``items`` is valid.
    """

    def rows(idx: Sequence[int]) -> np.ndarray:
        return _unit(np.asarray(vectors[np.asarray(idx, np.int64)], np.float64))

    window = (
        list(history)[-(long_history + recent_history) :] if long_history + recent_history else []
    )
    recent = window[-recent_history:] if recent_history else window
    if not recent:  # recent_history = 0: the future reading falls back to the whole window
        recent = window
    cand = rows(items)  # [C, D]
    hist = rows(window)  # [H, D]
    out = []
    for aspect in aspects:
        if aspect == "profile":
            out.append(to_scale(cand @ _unit(hist.mean(0)), -1.0, 1.0, scale))
        elif aspect == "future":
            out.append(to_scale(cand @ _unit(rows(recent).mean(0)), -1.0, 1.0, scale))
        elif aspect == "novelty":
            nearest = (cand @ hist.T).max(axis=1)
            out.append(to_scale(1.0 - nearest, 0.0, 2.0, scale))
        else:
            raise ValueError(
                f"judge.engine=embedding cannot score aspect {aspect!r}; it scores {ASPECTS}"
            )
    return np.stack(out, axis=1) if out else np.zeros((len(items), 0))


def identity_hash(cfg: JudgeSection, vectors: np.ndarray) -> str:
    """The ``prompt_hash`` of embedding scores: what decides them (the scoring version, aspects,
    scale, windows) and the vectors themselves, so rows scored from other embeddings (the sid stage
    rerun with another model) are re-scored on resume, never mixed with fresh ones."""
    blob = json.dumps(
        {
            "engine": "embedding",
            "version": VERSION,
            "aspects": list(cfg.aspects),
            "scale": cfg.scale,
            "history": [cfg.long_history, cfg.recent_history],
        },
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(blob)
    digest.update(np.ascontiguousarray(vectors, np.float32).tobytes())
    return digest.hexdigest()[:16]


class EmbeddingJudge:
    """The in-process embedding judge: ``score(requests)`` like :class:`~sgrec_ray.judge.scoring.Judge`.

    Args:
        cfg: the ``judge`` section (aspects, scale, history windows).
        vectors: item embeddings ``[n_items, dim]``, row = item_idx (:func:`load_vectors`).
    """

    def __init__(self, cfg: JudgeSection, vectors: np.ndarray) -> None:
        unsupported = [a for a in cfg.aspects if a not in ASPECTS]
        if unsupported:
            raise ValueError(
                f"judge.engine=embedding cannot score aspects {unsupported}; it scores {ASPECTS}"
            )
        self.cfg = cfg
        self.vectors = np.asarray(vectors, np.float32)
        self.prompt_hash = identity_hash(cfg, self.vectors)
        self.model = EMBEDDING_MODEL_ID

    def score(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """One result per request, in order; a pair that cannot be scored is a failed row."""
        n_items = len(self.vectors)
        results: list[JudgeResult | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            if not 0 <= int(r.item_idx) < n_items:
                results[i] = JudgeResult(
                    "failed", f"unknown item_idx {r.item_idx}", {}, None, False, 0
                )
                continue
            known = tuple(int(h) for h in r.history if 0 <= int(h) < n_items)
            if not known:
                results[i] = JudgeResult(
                    "failed",
                    "no_history: no known history item to compare with",
                    {},
                    None,
                    False,
                    0,
                )
                continue
            groups.setdefault(known, []).append(i)
        c = self.cfg
        for history, idx in groups.items():
            scores = aspect_scores(
                self.vectors,
                history,
                [int(requests[i].item_idx) for i in idx],
                c.aspects,
                c.scale,
                c.long_history,
                c.recent_history,
            )
            for i, row in zip(idx, scores, strict=True):
                aspects = {str(a): float(s) for a, s in zip(c.aspects, row, strict=True)}
                results[i] = JudgeResult("ok", None, aspects, None, False, 0)
        return [r for r in results if r is not None]

    def rows(
        self, requests: Sequence[JudgeRequest], results: Sequence[JudgeResult]
    ) -> dict[str, Any]:
        """Column dict in ``scores_schema`` order (origin/split left null for the caller)."""
        return score_columns(
            requests,
            results,
            self.cfg.aspects,
            self.prompt_hash,
            self.model,
            None,
            request_contexts(requests, prompt_spec(self.cfg)),
        )

    def score_table(self, chunk: pa.Table) -> pa.Table:
        """A candidates chunk (user_id, history, item_idx, origin, split[, timestamp]) → score rows."""
        batch = {name: chunk.column(name).to_pylist() for name in chunk.column_names}
        requests = requests_from_batch(batch)
        out = self.rows(requests, self.score(requests))
        out["origin"] = [str(x) for x in batch["origin"]]
        out["split"] = [str(x) for x in batch["split"]]
        return pa.table(out)


def load_vectors(ctx: Any) -> np.ndarray:
    """The sid stage's item embeddings ``[n_items, dim]`` (row = item_idx) of the run ``ctx``; a
    clear error when the sid stage has not written them (it does for every text embedding)."""
    uri = ctx.path("sid", EMBEDDINGS_FILE)
    if not storage.exists(uri):
        raise UserError(
            f"judge.engine=embedding reads the sid stage's item embeddings and {uri} does not "
            "exist: run `sgrec run CONFIG --stages sid` with a text embedding "
            "(sid.embedding_model), or use judge.engine=transformers"
        )
    idx, vectors = read_embeddings(storage.read_table(uri))
    if not np.array_equal(idx, np.arange(len(idx))):
        raise UserError(f"{uri}: item_idx must be 0..n-1 (one embedding per item), got gaps")
    return vectors


class EmbeddingJudgeEngine:
    """``judge.engine: embedding`` in the engine registry (:mod:`sgrec_ray.judge.registry`).

    The smallest engine, and the example of adding one: this class, one line in
    ``JUDGE_ENGINES``, and a test. No model to find; scores in the caller's process (the stage
    scores its chunks here too: microseconds per pair, an actor pool would only add overhead).
    """

    name = "embedding"
    language_model = False
    in_process = True
    rules = (
        (
            ("judge.engine", "judge.aspects"),
            lambda c: "context" not in c.judge.aspects,
            "no 'context' aspect with engine embedding (item embeddings carry no time or place)",
        ),
        (
            ("judge.engine", "judge.long_history", "judge.recent_history"),
            lambda c: c.judge.long_history + c.judge.recent_history > 0,
            "long_history + recent_history > 0 with engine embedding (it compares with those "
            "items)",
        ),
        (
            ("judge.engine", "judge.adapter", "judge.evidence"),
            lambda c: c.judge.adapter is None and not c.judge.evidence,
            "adapter null and evidence false with engine embedding (no language model to adapt "
            "or to write rationales)",
        ),
    )

    def model_id(self, cfg: JudgeSection) -> str:
        return EMBEDDING_MODEL_ID  # judge.model names an LLM, which this engine does not use

    def scoring(self, cfg: JudgeSection) -> str:
        return "cosine"

    def preflight(self, cfg: JudgeSection) -> None:
        pass  # the item embeddings are a stage output, checked when they are read

    def prompt_hash(self, ctx: Any, cfg: JudgeSection) -> str:
        return identity_hash(cfg, load_vectors(ctx))

    def stage_batches(self, work: StageWork) -> Iterator[pa.Table]:
        judge = EmbeddingJudge(work.ctx.cfg.judge, load_vectors(work.ctx))
        return (judge.score_table(c) for c in work.chunks)

    def in_process_judge(
        self, ctx: Any, cfg: JudgeSection, items: pa.Table, users: pa.Table | None
    ) -> EmbeddingJudge:
        return EmbeddingJudge(cfg, load_vectors(ctx))
