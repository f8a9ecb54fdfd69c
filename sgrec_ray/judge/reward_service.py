"""The semantic reward service: holistic PSJ scores for (user context, item) pairs, for A2PO.

``RewardCore`` (plain Python, testable without Ray) holds the Stage A judge, the Stage B aggregator,
the user featurizer and an LRU cache of aspect scores keyed by (user context hash, item_idx,
prompt hash). ``SemanticRewardService`` is that core as a Ray actor; ``start_reward_service`` makes a
small pool with resources from the config (never frozen in a decorator) behind a ``RewardClient``.

Design choices worth knowing:

- The cache holds *aspect* scores, not holistic ones: the expensive part is the LLM, and a retrained
  aggregator can reuse every cached judgement.
- The context hash covers exactly what the judge's prompt shows — the user id and the last
  ``long_history + recent_history`` items (and the time, when the Context aspect is on) — so two
  requests that would produce the same prompt share one cache entry.
- The client routes by user (a stable hash), not round-robin: one user's candidates land on the
  same actor, which keeps both its cache and the judge's per-user prompt prefix warm.
- A failed judgement scores ``None`` and is not cached: the A2PO caller falls back to the business
  reward for that group, and a later call may succeed.
"""

from __future__ import annotations

import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from sgrec_ray import storage
from sgrec_ray.config import Config
from sgrec_ray.data.schema import ITEMS_FILE, USERS_FILE
from sgrec_ray.judge.aggregate import Aggregator
from sgrec_ray.judge.rows import context_hash
from sgrec_ray.ray_utils import worker_env
from sgrec_ray.runs import RunContext

CacheKey = tuple[str, int, str]  # (user context hash, item_idx, prompt hash)


class RewardCore:
    """Judge + aggregator + LRU cache; ``judge=None`` serves from the (warm-started) cache only.

    Args:
        judge: a Stage A judge with ``score(requests)`` and ``prompt_hash`` (``scoring.Judge``, or
            ``embedding_engine.EmbeddingJudge``: ``JudgeEngine.in_process_judge``).
        aggregator: Stage B's w(x) (``aggregate.load_aggregator``).
        featurizer: turns (user_ids, histories) into the aggregator's feature rows.
        window: history items the judge's prompt shows (``long_history + recent_history``).
        prompt_hash: the judge's prompt hash (taken from ``judge`` when given).
        cache_size: LRU capacity in (context, item) entries.
    """

    def __init__(
        self,
        judge: Any | None,
        aggregator: Aggregator,
        featurizer: Any,
        *,
        window: int,
        prompt_hash: str | None = None,
        cache_size: int = 100_000,
    ) -> None:
        self.judge = judge
        self.aggregator = aggregator
        self.featurizer = featurizer
        self.window = window
        self.prompt_hash: str = str(prompt_hash or getattr(judge, "prompt_hash", ""))
        self.cache_size = cache_size
        self._cache: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._stats = {
            "calls": 0,
            "pairs": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "judged": 0,
            "judge_failed": 0,
            "no_judge": 0,  # misses with no judge to ask (cache-only mode)
            "warm_started": 0,
            "seconds": 0.0,
            "judge_seconds": 0.0,
        }

    # -- cache ----------------------------------------------------------------------------------

    def _get(self, key: CacheKey) -> np.ndarray | None:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    def _put(self, key: CacheKey, value: np.ndarray) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def warm_start(self, scores: pa.Table) -> int:
        """Load ok rows of the judge stage's scores (current prompt hash only) into the cache.

        Each row is keyed by its own ``context`` (the hash of the history it was judged with,
        :func:`~sgrec_ray.judge.rows.request_contexts`), so an item judged in several contexts
        (a candidate and Stage B pairs at other times) fills several entries, never the wrong
        one. Rows without a context (older score files) are skipped. Returns entries loaded.
        """
        aspects = self.aggregator.aspects
        ok = scores.filter(
            pc.and_(
                pc.equal(scores.column("status"), "ok"),
                pc.equal(scores.column("prompt_hash"), self.prompt_hash),
            )
        )
        columns = [ok.column(a).to_numpy(zero_copy_only=False) for a in aspects]
        values: Any = np.stack(columns, axis=1).astype(np.float32) if ok.num_rows else []
        contexts, items = ok.column("context").to_pylist(), ok.column("item_idx").to_pylist()
        loaded = 0
        for context, item, row in zip(contexts, items, values, strict=True):
            if context is None or not np.isfinite(row).all():
                continue
            self._put((context, int(item), self.prompt_hash), row)
            loaded += 1
        self._stats["warm_started"] += loaded
        return loaded

    # -- scoring --------------------------------------------------------------------------------

    def aspect_scores(
        self, user_ids: Sequence[str], histories: Sequence[Sequence[int]], items: Sequence[int]
    ) -> list[np.ndarray | None]:
        """Aspect vectors [A] per request (None where the judge failed or no judge is attached)."""
        keys = [
            (context_hash(str(u), h, self.window), int(i), self.prompt_hash)
            for u, h, i in zip(user_ids, histories, items, strict=True)
        ]
        out: list[np.ndarray | None] = [self._get(k) for k in keys]
        hits = sum(v is not None for v in out)
        self._stats["cache_hits"] += hits
        self._stats["cache_misses"] += len(keys) - hits
        # Each missing key is judged once, however often it repeats in the batch.
        todo: dict[CacheKey, int] = {}
        for n, (key, value) in enumerate(zip(keys, out, strict=True)):
            if value is None and key not in todo:
                todo[key] = n
        judge = self.judge
        if todo and judge is None:
            self._stats["no_judge"] += len(todo)
        elif todo and judge is not None:
            from sgrec_ray.judge.rows import JudgeRequest

            firsts = list(todo.values())
            requests = [
                JudgeRequest(str(user_ids[n]), [int(x) for x in histories[n]], int(items[n]))
                for n in firsts
            ]
            t0 = time.perf_counter()
            results = judge.score(requests)
            self._stats["judge_seconds"] += time.perf_counter() - t0
            self._stats["judged"] += len(requests)
            fresh: dict[CacheKey, np.ndarray] = {}
            for key, res in zip(todo, results, strict=True):
                vec = np.asarray(
                    [res.aspects.get(a, np.nan) for a in self.aggregator.aspects], np.float32
                )
                if res.status == "ok" and np.isfinite(vec).all():
                    fresh[key] = vec
                    self._put(key, vec)
                else:
                    self._stats["judge_failed"] += 1
            out = [v if v is not None else fresh.get(k) for k, v in zip(keys, out, strict=True)]
        return out

    def score(
        self, user_ids: Sequence[str], histories: Sequence[Sequence[int]], items: Sequence[int]
    ) -> list[float | None]:
        """Holistic scores s(x, a) = w(x)·aspects, one per request; None where judging failed."""
        t0 = time.perf_counter()
        aspects = self.aspect_scores(user_ids, histories, items)
        scores: list[float | None] = [None] * len(aspects)
        ready = [(n, v) for n, v in enumerate(aspects) if v is not None]
        if ready:
            feats = self.featurizer.features(
                [str(user_ids[n]) for n, _ in ready], [histories[n] for n, _ in ready]
            )
            values = self.aggregator.holistic(feats, np.stack([v for _, v in ready]))
            for (n, _), value in zip(ready, values, strict=True):
                scores[n] = float(value)
        self._stats["calls"] += 1
        self._stats["pairs"] += len(items)
        self._stats["seconds"] += time.perf_counter() - t0
        return scores

    def stats(self) -> dict[str, Any]:
        """Counters plus mean latency per call (ms) and the cache's size."""
        s = dict(self._stats)
        s["mean_latency_ms"] = 1000 * s["seconds"] / s["calls"] if s["calls"] else 0.0
        s["cache_size"] = len(self._cache)
        return s


# --------------------------------------------------------------------------------------------
# Building a core from a finished run


def build_core(cfg: Config, *, with_judge: bool = True) -> RewardCore:
    """A core for the run ``cfg`` names: its aggregator, its judge (loaded here), warm cache."""
    from sgrec_ray.judge.aggregate import load_aggregator
    from sgrec_ray.judge.registry import judge_engine
    from sgrec_ray.judge.stage import load_scores

    ctx = RunContext(cfg)
    aggregator = load_aggregator(ctx.path("aggregate", "model"))
    engine = judge_engine(cfg.judge.engine)
    judge: Any = None
    if with_judge:
        users_uri = ctx.path("data", USERS_FILE)
        users = storage.read_table(users_uri) if storage.exists(users_uri) else None
        items = storage.read_table(ctx.path("data", ITEMS_FILE))
        judge = engine.in_process_judge(ctx, cfg.judge, items, users)
    core = RewardCore(
        judge,
        aggregator,
        aggregator.featurizer(),
        window=cfg.judge.long_history + cfg.judge.recent_history,
        prompt_hash=judge.prompt_hash if judge is not None else engine.prompt_hash(ctx, cfg.judge),
        cache_size=cfg.aggregate.service_cache_size,
    )
    if cfg.aggregate.service_warm_start and storage.exists(ctx.path("judge", "scores")):
        core.warm_start(load_scores(ctx))
    return core


# --------------------------------------------------------------------------------------------
# Ray actor pool


class RewardActor:
    """The actor body: builds its core in the actor process (so the judge model loads there)."""

    def __init__(self, cfg: Config, with_judge: bool = True) -> None:
        os.environ.update(worker_env(cfg))
        self.core = build_core(cfg, with_judge=with_judge)

    def score(
        self, user_ids: list[str], histories: list[list[int]], items: list[int]
    ) -> list[float | None]:
        return self.core.score(user_ids, histories, items)

    def stats(self) -> dict[str, Any]:
        return self.core.stats()


# No resources in the decorator: the call site sets them from the config (STYLE.md).
SemanticRewardService = ray.remote(RewardActor)


class RewardClient:
    """Batched ``score`` over a pool of service actors, routed by user for cache locality."""

    def __init__(self, actors: list[Any]) -> None:
        if not actors:
            raise ValueError("RewardClient needs at least one actor")
        self.actors = actors

    def _route(self, user_id: str) -> int:
        return zlib.crc32(str(user_id).encode()) % len(self.actors)

    def score(
        self, user_ids: Sequence[str], histories: Sequence[Sequence[int]], items: Sequence[int]
    ) -> list[float | None]:
        """Holistic scores in request order; None where the judge failed (caller falls back)."""
        shards: dict[int, list[int]] = {}
        for n, user in enumerate(user_ids):
            shards.setdefault(self._route(user), []).append(n)
        refs = {
            a: self.actors[a].score.remote(
                [str(user_ids[n]) for n in idx],
                [[int(x) for x in histories[n]] for n in idx],
                [int(items[n]) for n in idx],
            )
            for a, idx in shards.items()
        }
        out: list[float | None] = [None] * len(user_ids)
        for a, values in zip(refs, ray.get(list(refs.values())), strict=True):
            for n, v in zip(shards[a], values, strict=True):
                out[n] = v
        return out

    def stats(self) -> dict[str, Any]:
        """Counters summed over actors; latency is the call-weighted mean."""
        per_actor = ray.get([a.stats.remote() for a in self.actors])
        total: dict[str, Any] = {}
        for s in per_actor:
            for k, v in s.items():
                if k != "mean_latency_ms":
                    total[k] = total.get(k, 0) + v
        total["mean_latency_ms"] = (
            1000 * total["seconds"] / total["calls"] if total.get("calls") else 0.0
        )
        total["actors"] = len(per_actor)
        return total


def start_reward_service(
    cfg: Config, num_actors: int | None = None, *, with_judge: bool = True
) -> RewardClient:
    """Start ``aggregate.service_actors`` actors with the configured CPUs/GPUs; return a client."""
    n = num_actors if num_actors is not None else cfg.aggregate.service_actors
    actors = [
        SemanticRewardService.options(
            num_cpus=cfg.aggregate.service_cpus, num_gpus=cfg.aggregate.service_gpus
        ).remote(cfg, with_judge)
        for _ in range(n)
    ]
    return RewardClient(actors)
