"""The ``judge`` stage (PSJ Stage A): candidates per user → LLM aspect scores → Parquet part files.

Recipe: check the model and engine (fail fast); read the split's samples; build candidate sets
(target, SFT beams, hard and random negatives); drop the pairs already judged by an earlier,
interrupted run; stream the rest through a Ray Data actor pool of :class:`Judge` (or the vLLM
processor) in chunks of whole users; write each finished chunk as one Parquet part file; report.
How chunks become scores is the engine's (``JudgeEngine.stage_batches``, looked up by
``judge.engine`` in :mod:`sgrec_ray.judge.registry`): an actor pool of the transformers judge,
vLLM's ``ray.data.llm`` processor, or in this process for the embedding engine.

Output, ``<run>/judge/``:
  ``candidates.parquet``  the candidate sets (user_id, history, timestamp, item_idx, origin, split)
  ``scores/part-*.parquet``  one file per finished chunk, schema :func:`scores_schema`; the key is
      (user_id, item_idx, context, prompt_hash), ``context`` the hash of the history shown
      (:func:`~sgrec_ray.judge.rows.request_contexts`). Read it with :func:`load_scores`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgrec_ray import storage
from sgrec_ray.config import JudgeSection
from sgrec_ray.data import schema
from sgrec_ray.judge import candidates as cands
from sgrec_ray.judge.checks import preflight
from sgrec_ray.judge.engines import ModelRef, model_id
from sgrec_ray.judge.prompts import PromptSpec
from sgrec_ray.judge.registry import judge_engine
from sgrec_ray.judge.rows import (
    StageWork,
    prompt_spec,
    request_contexts,
    requests_from_batch,
    scores_schema,
)
from sgrec_ray.runs import RunContext, StageResult

log = logging.getLogger(__name__)

STAGE = "judge"
SCORES_DIR = "scores"
CANDIDATES_FILE = "candidates.parquet"
KEY = ("user_id", "item_idx", "context", "prompt_hash")
CandidateKey = tuple[str, int, str]  # (user_id, item_idx, context)


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg.judge
    ref = preflight(cfg)  # model, adapter, engine, GPU: before any Ray work
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE)).sort_by("item_idx")
    users_uri = ctx.path("data", schema.USERS_FILE)
    users = storage.read_table(users_uri) if storage.exists(users_uri) else None

    table = build_candidate_table(ctx, cfg, items.num_rows)  # also writes candidates.parquet
    stats = judge_pending(ctx, table, items, users, ref)

    scores = load_scores(ctx)
    metrics = summarize(scores, cfg, stats, items)
    log.info(
        "judge: %d pairs (%d failed, %d truncated), %.2f pairs/s; means %s",
        metrics["pairs"],
        metrics["failed"],
        metrics["truncated"],
        metrics["pairs_per_s"],
        metrics["score_mean"],
    )
    return StageResult(
        outputs={
            "scores": ctx.path(STAGE, SCORES_DIR),
            "candidates": ctx.path(STAGE, CANDIDATES_FILE),
        },
        metrics=metrics,
    )


def build_candidate_table(ctx: RunContext, cfg: JudgeSection, n_items: int) -> pa.Table:
    """Candidate sets for ``judge.split`` (see :mod:`sgrec_ray.judge.candidates`), plus, with
    ``judge.pair_items``, the items of the same users' Stage B pairs (origin ``pair``).

    Built batch by batch of users from the split's Parquet file (beams, hard and random negatives
    per batch; each user's negatives come from its own seeded stream, so batching changes nothing)
    and written to ``candidates.parquet`` as they come; the table is read back for judging.
    """
    uri = ctx.path(STAGE, CANDIDATES_FILE)
    model_uri = ctx.require("sft")["outputs"]["model"] if cfg.n_beams > 0 else None
    neighbours = cands.load_neighbours(ctx) if cfg.n_hard > 0 else None
    users: list[str] = []
    with storage.parquet_writer(uri, cands.CANDIDATES) as writer:
        for samples in cands.sample_batches(ctx, cfg):
            beams = None
            if model_uri is not None:
                beams = cands.sft_beams(model_uri, samples, cfg.n_beams)
            table = cands.build_candidates(
                samples,
                n_items,
                n_random=cfg.n_random,
                n_hard=cfg.n_hard,
                split=cfg.split,
                seed=ctx.cfg.run.seed,
                neighbours=neighbours,
                beams=beams,
            )
            writer.write_table(table)
            if cfg.pair_items:
                users += samples.column("user_id").to_pylist()
    table = storage.read_table(uri)
    if cfg.pair_items:
        table = add_pair_items(table, _pair_rows(ctx, users), prompt_spec(cfg))
        storage.write_table(uri, table)
    return table


def _pair_rows(ctx: RunContext, users: list[str]) -> pa.Table | None:
    """``pairs_to_judge`` for ``users``, or None (logged) when the data holds no pairwise feedback."""
    from sgrec_ray.judge.pairs import NoFeedbackError, pairs_to_judge

    try:
        return pairs_to_judge(ctx, users=users)
    except NoFeedbackError as exc:  # no ratings and no aggregate.pairs_path: nothing for Stage B
        log.warning("judge: no pair items added (%s)", exc)
        return None


def add_pair_items(candidates: pa.Table, pairs: pa.Table | None, spec: PromptSpec) -> pa.Table:
    """Append (user_id, item_idx, history) pair rows as origin ``pair``, grouped with their user.

    A pair row whose (user, item, context) is already a candidate keeps the candidate row (the
    key must stay unique); the same item in another context (each pair is judged in the history
    before it) is a row of its own. The aggregate stage reads scores by (user, item, context),
    whatever their origin.
    """
    if pairs is None or pairs.num_rows == 0:
        return candidates
    n = pairs.num_rows
    rows = pa.table(
        {
            "user_id": pairs.column("user_id"),
            "history": pairs.column("history"),
            "timestamp": pa.nulls(n, pa.int64()),
            "item_idx": pairs.column("item_idx"),
            "origin": pa.array(["pair"] * n, pa.string()),
            "split": pa.array(["pairs"] * n, pa.string()),
        },
        schema=cands.CANDIDATES,
    )
    have = set(candidate_keys(candidates, spec))
    keep = [k not in have for k in candidate_keys(rows, spec)]
    extra = rows.filter(pa.array(keep, pa.bool_()))
    merged = pa.concat_tables([candidates, extra])
    # Whole users per chunk (user_chunks) needs a user's rows together; the sort is stable, so
    # each user's candidates keep their order (target first) ahead of its pair rows.
    order = {u: k for k, u in enumerate(dict.fromkeys(merged.column("user_id").to_pylist()))}
    rank = np.array([order[u] for u in merged.column("user_id").to_pylist()])
    return merged.take(pa.array(np.argsort(rank, kind="stable")))


def candidate_keys(candidates: pa.Table, spec: PromptSpec) -> list[CandidateKey]:
    """(user_id, item_idx, context) of each candidate row: the judgement it asks for."""
    columns = ["user_id", "history", "item_idx", "timestamp"]
    requests = requests_from_batch({c: candidates.column(c).to_pylist() for c in columns})
    contexts = request_contexts(requests, spec)
    return [(r.user_id, r.item_idx, c) for r, c in zip(requests, contexts, strict=True)]


# ---------------------------------------------------------------------------------------------
# Resumable judging


def judge_pending(
    ctx: RunContext,
    candidates: pa.Table,
    items: pa.Table,
    users: pa.Table | None,
    ref: ModelRef | None,
    max_chunks: int | None = None,
    engine: type | None = None,
) -> dict[str, Any]:
    """Judge the candidate pairs not yet in ``scores/``; one part file per finished chunk.

    ``max_chunks`` stops after that many chunks (what an interruption leaves behind; for tests).
    ``engine``: handed to ``JudgeEngine.stage_batches`` as its test seam (judge.engine=vllm: a
    stand-in for the vLLM engine stage, see
    :func:`~sgrec_ray.judge.vllm_engine.build_judge_processor`).
    Returns this run's counts: pairs judged, chunks written, seconds, prompt tokens, and the
    prompt hash the rows carry.
    """
    cfg = ctx.cfg.judge
    out_dir = ctx.path(STAGE, SCORES_DIR)
    judge = judge_engine(cfg.engine)
    phash = judge.prompt_hash(ctx, cfg)
    identity = (phash, judge.model_id(cfg), cfg.adapter)
    keys = candidate_keys(candidates, prompt_spec(cfg))
    done = _existing_keys(out_dir, identity, set(keys), scores_schema(cfg.aspects))
    mask = [k not in done for k in keys]
    pending = candidates.filter(pa.array(mask, pa.bool_()))
    stats = {
        "resumed_pairs": len(done),
        "judged_pairs": 0,
        "chunks": 0,
        "seconds": 0.0,
        "prompt_tokens": 0,
        "prompt_hash": phash,
    }
    if pending.num_rows == 0:
        log.info("judge: all %d pairs already judged in %s", len(done), out_dir)
        return stats
    chunks = user_chunks(pending, cfg.batch_size)
    log.info(
        "judge: %d pairs to judge in %d chunks (%d already done) → %s",
        pending.num_rows,
        len(chunks),
        len(done),
        out_dir,
    )
    started = time.time()
    target = scores_schema(cfg.aspects)
    batches = judge.stage_batches(StageWork(ctx, chunks, items, users, ref, engine))
    try:
        for batch in batches:
            table = conform(batch, target)
            _write_part(out_dir, table)
            stats["chunks"] += 1
            stats["judged_pairs"] += table.num_rows
            stats["prompt_tokens"] += int(pc.sum(table.column("prompt_tokens")).as_py() or 0)
            elapsed = time.time() - started
            failed = table.num_rows - pc.sum(pc.equal(table.column("status"), "ok")).as_py()
            log.info(
                "judge: chunk %d/%d written (%d pairs, %d failed); %d/%d pairs, %.2f pairs/s",
                stats["chunks"],
                len(chunks),
                table.num_rows,
                failed,
                stats["judged_pairs"],
                pending.num_rows,
                stats["judged_pairs"] / max(elapsed, 1e-9),
            )
            if max_chunks is not None and stats["chunks"] >= max_chunks:
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the streaming executor when we leave early
    stats["seconds"] = time.time() - started
    return stats


def user_chunks(table: pa.Table, size: int) -> list[pa.Table]:
    """Consecutive rows in chunks of at most ``size`` rows made of whole users (a user's candidates
    share one prompt prefix); a user with more than ``size`` candidates is split."""
    users = table.column("user_id").to_pylist()
    bounds = [0] + [i for i in range(1, len(users)) if users[i] != users[i - 1]] + [len(users)]
    chunks: list[pa.Table] = []
    start = 0
    for lo, hi in itertools.pairwise(bounds):
        if hi - start > size and lo > start:  # this user does not fit: close the chunk before it
            chunks.append(table.slice(start, lo - start))
            start = lo
        while hi - start > size:  # one user larger than a chunk
            chunks.append(table.slice(start, size))
            start += size
    if start < len(users):
        chunks.append(table.slice(start, len(users) - start))
    return chunks


def conform(batch: pa.Table, target: pa.Schema) -> pa.Table:
    """A batch in exactly the ``target`` schema: missing columns null, NaN scores null."""
    n = batch.num_rows
    cols = []
    for f in target:
        if f.name not in batch.column_names:
            cols.append(pa.nulls(n, f.type))
            continue
        col = batch.column(f.name).cast(f.type)
        if pa.types.is_floating(f.type):  # a failed row has no score: null, not NaN
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, f.type), col)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=target)


def _write_part(out_dir: str, table: pa.Table) -> str:
    """Write one chunk atomically: a temp name pyarrow datasets ignore ('_' prefix), then rename."""
    keys = "\n".join(
        "\t".join(map(str, key))
        for key in zip(*(table.column(k).to_pylist() for k in KEY), strict=True)
    )
    name = f"part-{hashlib.sha1(keys.encode()).hexdigest()[:16]}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs, path = storage.filesystem(storage.join(out_dir, name))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = path.rsplit("/", 1)[0] + "/_" + name + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getvalue())
    fs.move(tmp, path)
    return path


def _part_files(out_dir: str) -> list[str]:
    return [n for n in storage.listdir(out_dir) if n.startswith("part-") and n.endswith(".parquet")]


def _existing_keys(
    out_dir: str,
    identity: tuple[str, str, str | None],
    wanted: set[CandidateKey],
    target: pa.Schema,
) -> set[CandidateKey]:
    """Keys of rows already judged with this prompt, model and adapter.

    Part files holding anything else (an older prompt or model, candidates no longer asked for, or
    a row judged twice) are rewritten without those rows, so the folder always holds exactly one
    row per current key; unreadable files (a crash mid-write on a store without atomic rename) are
    removed and their pairs judged again.
    """
    done: set[CandidateKey] = set()
    for name in _part_files(out_dir):
        uri = storage.join(out_dir, name)
        try:
            table = storage.read_table(uri)
        except Exception as err:
            log.warning(
                "judge: unreadable part %s (%s): removed, its pairs will be judged again", name, err
            )
            _delete(uri)
            continue
        keep = []
        # A file from before scores carried a context has none: all of it is judged again.
        contexts = (
            table.column("context").to_pylist()
            if "context" in table.column_names
            else [None] * table.num_rows
        )
        for u, i, c, h, m, a in zip(
            table.column("user_id").to_pylist(),
            table.column("item_idx").to_pylist(),
            contexts,
            *(table.column(c).to_pylist() for c in ("prompt_hash", "model", "adapter")),
            strict=True,
        ):
            ok = (h, m, a) == identity and (u, i, c) in wanted and (u, i, c) not in done
            keep.append(ok)
            if ok:
                done.add((u, i, c))
        if all(keep) and table.schema.equals(target):
            continue
        kept = table.filter(pa.array(keep, pa.bool_()))
        log.info(
            "judge: %s: %d stale rows dropped (prompt/model/candidates changed)",
            name,
            table.num_rows - kept.num_rows,
        )
        _delete(uri)
        if kept.num_rows:
            _write_part(out_dir, conform(kept, target))
    return done


def _delete(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    fs.delete_file(path)


def load_scores(ctx: RunContext) -> pa.Table:
    """All judged rows of the run (schema :func:`scores_schema`), one per (user, item, prompt)."""
    cfg = ctx.cfg.judge
    target = scores_schema(cfg.aspects)
    out_dir = ctx.path(STAGE, SCORES_DIR)
    parts = [
        conform(storage.read_table(storage.join(out_dir, n)), target) for n in _part_files(out_dir)
    ]
    return pa.concat_tables(parts) if parts else target.empty_table()


# ---------------------------------------------------------------------------------------------
# Report


def summarize(
    scores: pa.Table, cfg: JudgeSection, stats: dict[str, Any], items: pa.Table
) -> dict[str, Any]:
    """Stage metrics: counts, failures by reason, throughput, score means (overall and by origin)."""
    ok = scores.filter(pc.equal(scores.column("status"), "ok"))
    reasons = Counter(
        r
        for r, s in zip(
            scores.column("reason").to_pylist(), scores.column("status").to_pylist(), strict=True
        )
        if s != "ok"
    )
    by_origin: dict[str, dict[str, float]] = {}
    for origin in cands.ORIGINS:
        rows = ok.filter(pc.equal(ok.column("origin"), origin))
        if rows.num_rows:
            by_origin[origin] = {a: _mean(rows.column(a)) for a in cfg.aspects}
    seconds = stats.get("seconds", 0.0)
    missing_text = 0
    if "text" in items.column_names:
        texts = items.column("text").to_pylist()
        titles = (
            items.column("title").to_pylist()
            if "title" in items.column_names
            else [None] * len(texts)
        )
        missing_text = sum(1 for t, ti in zip(texts, titles, strict=True) if not (t or "").strip())
    return {
        "pairs": scores.num_rows,
        "users": len(set(scores.column("user_id").to_pylist())),
        "judged_this_run": stats.get("judged_pairs", 0),
        "resumed_pairs": stats.get("resumed_pairs", 0),
        "failed": sum(reasons.values()),
        "failed_by_reason": dict(reasons),
        "truncated": int(pc.sum(scores.column("truncated")).as_py() or 0),
        "items_without_text": missing_text,
        "pairs_per_s": round(stats.get("judged_pairs", 0) / seconds, 3) if seconds else 0.0,
        "prompt_tokens_per_s": round(stats.get("prompt_tokens", 0) / seconds, 1)
        if seconds
        else 0.0,
        "score_mean": {a: _mean(ok.column(a)) for a in cfg.aspects},
        "score_mean_by_origin": by_origin,
        "origins": dict(Counter(scores.column("origin").to_pylist())),
        "model": model_id(cfg),
        "adapter": cfg.adapter,
        "engine": cfg.engine,
        "scoring": judge_engine(cfg.engine).scoring(cfg),
        "prompt_hash": stats.get("prompt_hash") or prompt_spec(cfg).prompt_hash,
        "split": cfg.split,
    }


def _mean(column: pa.ChunkedArray) -> float | None:
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 4) if len(values) else None
