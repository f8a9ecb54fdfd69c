"""Top-K ranking metrics on the full catalogue (no sampled negatives). Pure numpy.

Every metric is computed from one number per user, the 0-based rank of the true item in the
recommended list (-1 if absent), so all metrics of a report agree with each other by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """0-based position of each target in its user's ranked list; -1 when it was not recommended.

    ranked: per user, recommended item indices, best first (any length).
    targets: per user, the true next item.
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets")
    ranks = np.full(len(targets), -1, dtype=np.int64)
    for u, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        hits = np.flatnonzero(np.asarray(items) == target)
        if hits.size:
            ranks[u] = hits[0]
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of users whose true item is in the top k."""
    return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item per user: 1/log2(rank+2) when it is in the top k, else 0."""
    if not ranks.size:
        return 0.0
    inside = (ranks >= 0) & (ranks < k)
    gains = np.zeros(ranks.shape, dtype=np.float64)
    gains[inside] = 1.0 / np.log2(ranks[inside] + 2.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the recommended list (0 when absent, i.e. MRR@list length)."""
    if not ranks.size:
        return 0.0
    found = ranks >= 0
    rr = np.zeros(ranks.shape, dtype=np.float64)
    rr[found] = 1.0 / (ranks[found] + 1.0)
    return float(rr.mean())


def ranking_metrics(
    ranked: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int], n_items: int
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR, valid-output rate and catalogue coverage, with lower-case names.

    valid_rate: share of returned items that are real catalogue items (0 <= idx < n_items), per slot.
    coverage@k: distinct items recommended in anyone's top k (max k here), over the catalogue size.
    """
    ranks = target_ranks(ranked, targets)
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        out[f"hr@{k}"] = hit_rate(ranks, k)
        if k > 1:
            out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["mrr"] = mrr(ranks)
    kmax = max(ks)
    flat = np.concatenate([np.asarray(r[:kmax], dtype=np.int64) for r in ranked]) if ranked else []
    flat = np.asarray(flat, dtype=np.int64)
    valid = (flat >= 0) & (flat < n_items)
    out["valid_rate"] = float(valid.mean()) if flat.size else 0.0
    out[f"coverage@{kmax}"] = float(np.unique(flat[valid]).size / n_items) if n_items else 0.0
    out["users"] = float(len(targets))
    return out


def standard_errors(
    ranked: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int]
) -> dict[str, float]:
    """Standard error of the mean of HR@k and NDCG@k over users (std / sqrt(n), ddof 1).

    Every quality figure in a report is a mean over users; this is its sampling noise, so two
    methods on the same users can be told apart (or not) at a glance.
    """
    ranks = target_ranks(ranked, targets)
    n = ranks.size
    out: dict[str, float] = {}
    if n < 2:
        return out
    for k in sorted(set(ks)):
        inside = (ranks >= 0) & (ranks < k)
        gains = np.where(inside, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        out[f"hr@{k}"] = float(inside.astype(np.float64).std(ddof=1) / np.sqrt(n))
        if k > 1:
            out[f"ndcg@{k}"] = float(gains.std(ddof=1) / np.sqrt(n))
    return out
