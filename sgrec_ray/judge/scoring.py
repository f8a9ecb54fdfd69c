"""The in-process judge: (user history, candidate item) pairs → aspect scores.

One class serves every caller: the judge stage uses it as its Ray Data ``map_batches`` actor UDF
(``__call__``), the semantic reward service calls :meth:`Judge.score` directly, tests and the
benchmark construct it in-process. Requests of the same user share one prompt prefix.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from sgrec_ray.config import JudgeSection
from sgrec_ray.judge import prompts
from sgrec_ray.judge.engines import (
    JudgeSetupError,
    TransformersEngine,
    llm_model_id,
    make_engine,
)
from sgrec_ray.judge.prompts import EncodedUser
from sgrec_ray.judge.rows import (
    JudgePrompts,
    JudgeRequest,
    JudgeResult,
    StageWork,
    prompt_spec,
    request_contexts,
    requests_from_batch,
    score_columns,
)

log = logging.getLogger(__name__)


class Judge:
    """Scores (user, candidate) pairs on the enabled aspects with one LLM engine.

    Args:
        cfg: the ``judge`` config section (model, aspects, scale, scoring mode, budgets).
        items: the data stage's items table (item_idx, item_id, title, text, optional genres).
        users: optional user features (user_id + demographics) for the profile line.
        engine: an already-loaded engine (the benchmark shares one model between modes).
    """

    def __init__(
        self,
        cfg: JudgeSection,
        items: pa.Table,
        users: pa.Table | None = None,
        engine: TransformersEngine | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine or make_engine(cfg)
        self.prompts = JudgePrompts(cfg, self.engine.tokenizer, items, users)
        self.spec, self.builder = self.prompts.spec, self.prompts.builder
        self.prompt_hash = self.spec.prompt_hash
        self.model = llm_model_id(cfg)

    # -- public API ------------------------------------------------------------------------------

    def score(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """Judge each request; one result per request, in order. Never raises for a bad pair."""
        results: list[JudgeResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        n_items = len(self.prompts.items.long)
        for i, r in enumerate(requests):
            if not 0 <= int(r.item_idx) < n_items:
                results[i] = JudgeResult(
                    "failed", f"unknown item_idx {r.item_idx}", {}, None, False, 0
                )
                continue
            groups.setdefault(self.prompts.user_key(r), []).append(i)
        for key, idx in groups.items():
            try:
                user = self.prompts.encode_user(requests[idx[0]])
                scored = self._score_group(user, [int(requests[i].item_idx) for i in idx])
            except Exception as err:  # one bad group must not lose the others
                log.warning("judge: user %s failed: %r", key[0], err)
                reason = f"engine_error: {type(err).__name__}: {err}"[:300]
                scored = [JudgeResult("failed", reason, {}, None, False, 0) for _ in idx]
            for i, res in zip(idx, scored, strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data UDF: rows (user_id, history, item_idx, origin, split[, timestamp]) → score rows."""
        requests = requests_from_batch(batch)
        results = self.score(requests)
        out = self.rows(requests, results)
        out["origin"] = [str(x) for x in batch["origin"]]
        out["split"] = [str(x) for x in batch["split"]]
        return out

    def rows(
        self, requests: Sequence[JudgeRequest], results: Sequence[JudgeResult]
    ) -> dict[str, Any]:
        """Column dict in :func:`scores_schema` order (origin/split left null for the caller)."""
        return score_columns(
            requests,
            results,
            self.spec.aspects,
            self.prompt_hash,
            self.model,
            self.cfg.adapter,
            request_contexts(requests, self.spec),
        )

    # -- internals -------------------------------------------------------------------------------

    def _score_group(self, user: EncodedUser, items: list[int]) -> list[JudgeResult]:
        if self.cfg.scoring == "generate":
            results = self._generate_scores(user, items)
        else:
            cands = [self.builder.encode_candidate(i) for i in items]
            logits = self.engine.slot_logits(
                user.ids, [c.ids for c in cands], [c.slots for c in cands], self.builder.score_ids
            )
            results = []
            for cand, slot_logits in zip(cands, logits, strict=True):
                s = prompts.scores_from_slots(slot_logits, self.spec.aspects)
                n_tokens = len(user.ids) + len(cand.ids)
                results.append(
                    JudgeResult(s.status, s.reason, s.scores, None, user.truncated, n_tokens)
                )
        if self.cfg.evidence:
            results = self._add_evidence(user, items, results)
        return results

    def _generate_scores(self, user: EncodedUser, items: list[int]) -> list[JudgeResult]:
        """Free-text answers parsed by regex; unparsable ones retried with sampling, then failed."""
        max_new = 6 * len(self.spec.aspects) + 4
        prompt_ids = [self.builder.answer_ids(user, i, "") for i in items]
        parsed: list[dict[str, float] | None] = [None] * len(items)
        todo = list(range(len(items)))
        for attempt in range(1 + max(0, self.cfg.max_retries)):
            texts = self.engine.generate(
                [prompt_ids[j] for j in todo], max_new, sample=attempt > 0, seed=attempt
            )
            for j, text in zip(todo, texts, strict=True):
                parsed[j] = prompts.parse_scores_text(text, self.spec.aspects, self.spec.scale)
            todo = [j for j in todo if parsed[j] is None]
            if not todo:
                break
        return [
            JudgeResult(
                "ok" if p else "failed",
                None if p else f"unparsable_output after {1 + self.cfg.max_retries} attempts",
                p or {},
                None,
                user.truncated,
                len(ids),
            )
            for p, ids in zip(parsed, prompt_ids, strict=True)
        ]

    def _add_evidence(
        self, user: EncodedUser, items: list[int], results: list[JudgeResult]
    ) -> list[JudgeResult]:
        """One greedy sentence per aspect, conditioned on the scores just read."""
        ok = [j for j, r in enumerate(results) if r.status == "ok"]
        evidence: dict[int, dict[str, str]] = {j: {} for j in ok}
        for aspect in self.spec.aspects:
            prompts_ids = [
                self.builder.answer_ids(
                    user, items[j], prompts.evidence_prompt(self.spec, results[j].aspects, aspect)
                )
                for j in ok
            ]
            texts = (
                self.engine.generate(
                    prompts_ids, self.cfg.evidence_max_tokens, stop_at_newline=True
                )
                if ok
                else []
            )
            for j, text in zip(ok, texts, strict=True):
                evidence[j][aspect] = prompts.first_sentence(text)
        return [
            r._replace(evidence=evidence[j]) if j in evidence else r for j, r in enumerate(results)
        ]


class TransformersJudgeEngine:
    """``judge.engine: transformers`` in the engine registry (:mod:`sgrec_ray.judge.registry`):
    :class:`Judge` in-process, and as the judge stage's Ray Data actor pool (CPU or GPU)."""

    name = "transformers"
    language_model = True
    in_process = True
    rules: tuple = ()

    def model_id(self, cfg: JudgeSection) -> str:
        return llm_model_id(cfg)

    def scoring(self, cfg: JudgeSection) -> str:
        return cfg.scoring

    def preflight(self, cfg: JudgeSection) -> None:
        if cfg.adapter is not None and importlib.util.find_spec("peft") is None:
            raise JudgeSetupError("judge.adapter needs the package 'peft': `pip install peft`")

    def prompt_hash(self, ctx: Any, cfg: JudgeSection) -> str:
        return prompt_spec(cfg).prompt_hash

    def stage_batches(self, work: StageWork) -> Iterator[pa.Table]:
        import ray

        cfg = work.ctx.cfg.judge
        ds = ray.data.from_arrow(work.chunks)  # one block per chunk: one actor call, one part file
        out = ds.map_batches(
            Judge,
            fn_constructor_kwargs={"cfg": cfg, "items": work.items, "users": work.users},
            batch_size=None,
            batch_format="numpy",
            concurrency=cfg.concurrency,
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
        )
        return out.iter_batches(batch_size=None, batch_format="pyarrow")

    def in_process_judge(
        self, ctx: Any, cfg: JudgeSection, items: pa.Table, users: pa.Table | None
    ) -> Judge:
        return Judge(cfg, items, users)
