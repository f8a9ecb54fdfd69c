"""A small synthetic run folder for Stage B tests: data, SID embeddings and Stage A scores.

The ground truth is user-conditional on purpose: users with gender "M" rank items by the Profile
aspect, users with "F" by Novelty. So uniform weights are mediocre on held-out pairs and a w(x)
that reads the gender feature can do clearly better — the property the aggregator must show.
Timestamps interleave users, so the time split holds out the *later* pairs of every user.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.data.schema import embeddings_table
from sgrec_ray.runs import RunContext, StageResult, write_manifest

ASPECTS = ["profile", "future", "novelty"]
N_USERS = 40
N_ITEMS = 60
EVENTS_PER_USER = 24
SAMPLE_HISTORY = [1, 2, 3]  # the context Stage A "judged" every row in


def prompt_hash(ctx: RunContext) -> str:
    """The hash Stage A stamps on rows for this config (so the reward service's warm start matches)."""
    from sgrec_ray.judge.rows import prompt_spec

    return prompt_spec(ctx.cfg.judge).prompt_hash


def true_weights(gender: str) -> np.ndarray:
    return np.array([0.85, 0.1, 0.05]) if gender == "M" else np.array([0.05, 0.1, 0.85])


def build(ctx: RunContext, seed: int = 0, failed_rows: int = 6) -> dict[str, object]:
    """Write the run's data/, sid/ and judge/ artifacts (+ manifests); return what was made."""
    rng = np.random.default_rng(seed)
    users = [f"u{k:03d}" for k in range(N_USERS)]
    genders = ["M" if k % 2 == 0 else "F" for k in range(N_USERS)]
    storage.write_table(
        ctx.path("data", "items.parquet"),
        pa.table(
            {
                "item_idx": pa.array(range(N_ITEMS), pa.int32()),
                "item_id": [f"i{k}" for k in range(N_ITEMS)],
                "title": [f"Movie {k}" for k in range(N_ITEMS)],
                "text": [f"Movie {k}. A film about topic {k % 7}." for k in range(N_ITEMS)],
                "genres": [["Drama", "Comedy", "Action"][k % 3] for k in range(N_ITEMS)],
            }
        ),
    )
    storage.write_table(
        ctx.path("data", "users.parquet"),
        pa.table(
            {
                "user_id": users,
                "age": pa.array(rng.integers(18, 60, N_USERS).tolist(), pa.int32()),
                "gender": genders,
                "occupation": [["student", "engineer", "artist"][k % 3] for k in range(N_USERS)],
                "zip_code": [f"{10000 + k}" for k in range(N_USERS)],  # unique: dropped
            }
        ),
    )
    emb = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    storage.write_table(
        ctx.path("sid", "embeddings.parquet"), embeddings_table(np.arange(N_ITEMS), emb)
    )

    inter: dict[str, list] = {"user_id": [], "item_idx": [], "timestamp": [], "rating": []}
    truth: dict[tuple[str, int], np.ndarray] = {}  # the judge's aspects of (user, item)
    for k, (user, gender) in enumerate(zip(users, genders, strict=True)):
        items = rng.choice(N_ITEMS, EVENTS_PER_USER, replace=False)
        aspects = rng.uniform(1, 5, size=(EVENTS_PER_USER, 3)).astype(np.float32)
        utility = aspects @ true_weights(gender) + rng.normal(0, 0.15, EVENTS_PER_USER)
        ranks = np.argsort(np.argsort(utility))  # 0 = worst
        ratings = np.where(ranks >= 14, 5.0, np.where(ranks < 8, 1.0, 3.0))
        for e in range(EVENTS_PER_USER):
            inter["user_id"].append(user)
            inter["item_idx"].append(int(items[e]))
            inter["timestamp"].append(1_000_000 + e * 1000 + k)  # users interleaved in time
            inter["rating"].append(float(ratings[e]))
            truth[(user, int(items[e]))] = aspects[e]
    interactions = pa.table(
        {
            "user_id": pa.array(inter["user_id"], pa.string()),
            "item_idx": pa.array(inter["item_idx"], pa.int32()),
            "timestamp": pa.array(inter["timestamp"], pa.int64()),
            "rating": pa.array(inter["rating"], pa.float32()),
            "value": pa.array([None] * len(inter["user_id"]), pa.float32()),
        }
    )
    storage.write_table(ctx.path("data", "interactions.parquet"), interactions)

    # Stage A "judged" every event in SAMPLE_HISTORY (the reward service's warm start) and every
    # pair item in its pair's context (what Stage B joins on); the aspects do not depend on the
    # context here, they are the ground truth above.
    from sgrec_ray.judge.pairs import pairs_to_judge
    from sgrec_ray.judge.rows import JudgeRequest, prompt_spec, request_contexts

    pair_rows = pairs_to_judge(ctx)
    candidates = pa.table(
        {
            "user_id": [*inter["user_id"], *pair_rows.column("user_id").to_pylist()],
            "history": pa.array(
                [SAMPLE_HISTORY] * len(inter["user_id"]) + pair_rows.column("history").to_pylist(),
                pa.list_(pa.int32()),
            ),
            "timestamp": pa.nulls(len(inter["user_id"]) + pair_rows.num_rows, pa.int64()),
            "item_idx": pa.array(
                [*inter["item_idx"], *pair_rows.column("item_idx").to_pylist()], pa.int32()
            ),
            "origin": ["target"] * len(inter["user_id"]) + ["pair"] * pair_rows.num_rows,
            "split": ["valid"] * len(inter["user_id"]) + ["pairs"] * pair_rows.num_rows,
        }
    )
    requests = [
        JudgeRequest(u, h, i)
        for u, h, i in zip(
            *(candidates.column(c).to_pylist() for c in ("user_id", "history", "item_idx")),
            strict=True,
        )
    ]
    n = len(requests)
    status = ["ok"] * n
    # A few pair rows failed in Stage A: their pairs must be counted as skipped, never used.
    for r in range(len(inter["user_id"]), n, 37)[:failed_rows]:
        status[r] = "failed"
    aspect_cols = {
        a: pa.array(
            [
                None if st == "failed" else float(truth[(r.user_id, r.item_idx)][k])
                for st, r in zip(status, requests, strict=True)
            ],
            pa.float32(),
        )
        for k, a in enumerate(ASPECTS)
    }
    scores = pa.table(
        {
            "user_id": candidates.column("user_id"),
            "item_idx": candidates.column("item_idx"),
            "context": request_contexts(requests, prompt_spec(ctx.cfg.judge)),
            "origin": candidates.column("origin"),
            "split": candidates.column("split"),
            "prompt_hash": [prompt_hash(ctx)] * n,
            "status": status,
            "reason": [None if s == "ok" else "engine_error: synthetic" for s in status],
            **aspect_cols,
            "evidence": ['{"profile": "Fits a taste for drama."}'] + [None] * (n - 1),
            "model": ["synthetic"] * n,
            "adapter": pa.array([None] * n, pa.string()),
            "truncated": [False] * n,
        }
    )
    # Two part files, like Stage A's streaming writer produces.
    half = n // 2
    storage.write_table(ctx.path("judge", "scores", "part-0.parquet"), scores.slice(0, half))
    storage.write_table(ctx.path("judge", "scores", "part-1.parquet"), scores.slice(half))
    storage.write_table(ctx.path("judge", "candidates.parquet"), candidates)
    for stage in ("data", "sid", "sft", "judge"):
        write_manifest(ctx, stage, f"synthetic-{stage}", {}, StageResult(), 0.0)
    return {"interactions": interactions, "scores": scores, "embeddings": emb}
