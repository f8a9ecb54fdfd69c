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


class RankingAccumulator:
    """Ranking metrics over users added batch by batch, so a caller streaming predictions holds
    8 bytes per user (the target's rank) plus one flag per catalogue item, not the lists.

    Every figure is computed from the concatenated ranks exactly as :func:`ranking_metrics` does
    for one list of all users (it is implemented with this class), so streamed and in-memory
    results are identical.
    """

    def __init__(self, n_items: int, kmax: int) -> None:
        self.n_items, self.kmax = n_items, kmax
        self._ranks: list[np.ndarray] = []
        self._slots = 0  # recommended items seen, top kmax of each user
        self._valid = 0  # of which real catalogue items
        self._recommended = np.zeros(max(n_items, 0), dtype=bool)

    def add(self, ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> None:
        """One batch: per user, recommended item indices (best first) and the true next item."""
        self._ranks.append(target_ranks(ranked, targets))
        if not len(ranked):
            return
        flat = np.concatenate([np.asarray(r[: self.kmax], dtype=np.int64) for r in ranked])
        valid = (flat >= 0) & (flat < self.n_items)
        self._slots += int(flat.size)
        self._valid += int(valid.sum())
        self._recommended[flat[valid]] = True

    @property
    def ranks(self) -> np.ndarray:
        return np.concatenate(self._ranks) if self._ranks else np.zeros(0, dtype=np.int64)

    def metrics(self, ks: Sequence[int]) -> dict[str, float]:
        """HR@k, NDCG@k, MRR, valid_rate, coverage@kmax, users (see :func:`ranking_metrics`)."""
        ranks = self.ranks
        out: dict[str, float] = {}
        for k in sorted(set(ks)):
            out[f"hr@{k}"] = hit_rate(ranks, k)
            if k > 1:
                out[f"ndcg@{k}"] = ndcg(ranks, k)
        out["mrr"] = mrr(ranks)
        # A share of 0/1 flags: an exact integer count over the slot count, as the mean was.
        out["valid_rate"] = self._valid / self._slots if self._slots else 0.0
        covered = int(self._recommended.sum())
        out[f"coverage@{self.kmax}"] = covered / self.n_items if self.n_items else 0.0
        out["users"] = float(ranks.size)
        return out

    def standard_errors(self, ks: Sequence[int]) -> dict[str, float]:
        return rank_standard_errors(self.ranks, ks)


def ranking_metrics(
    ranked: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int], n_items: int
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR, valid-output rate and catalogue coverage, with lower-case names.

    valid_rate: share of returned items that are real catalogue items (0 <= idx < n_items), per slot.
    coverage@k: distinct items recommended in anyone's top k (max k here), over the catalogue size.
    """
    acc = RankingAccumulator(n_items, max(ks))
    acc.add(ranked, targets)
    return acc.metrics(ks)


def standard_errors(
    ranked: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int]
) -> dict[str, float]:
    """Standard error of the mean of HR@k and NDCG@k over users (std / sqrt(n), ddof 1).

    Every quality figure in a report is a mean over users; this is its sampling noise, so two
    methods on the same users can be told apart (or not) at a glance.
    """
    return rank_standard_errors(target_ranks(ranked, targets), ks)


def per_user_gains(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 [users] hit@k and NDCG@k of each user, from the targets' ranks (-1 = absent)."""
    inside = (ranks >= 0) & (ranks < k)
    gains = np.where(inside, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return inside.astype(np.float64), gains


def rank_standard_errors(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """:func:`standard_errors` from the targets' ranks (what :class:`RankingAccumulator` keeps)."""
    n = ranks.size
    out: dict[str, float] = {}
    if n < 2:
        return out
    for k in sorted(set(ks)):
        hits, gains = per_user_gains(ranks, k)
        out[f"hr@{k}"] = float(hits.std(ddof=1) / np.sqrt(n))
        if k > 1:
            out[f"ndcg@{k}"] = float(gains.std(ddof=1) / np.sqrt(n))
    return out


def paired_difference(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], k: int
) -> dict[str, tuple[float, float]]:
    """HR@k and NDCG@k of model a minus model b on the same users: (mean, standard error).

    ``a`` and ``b`` are the targets' ranks of each run (seed) of a model, one array per run over
    the same users in the same order; each model's per-user gains are averaged over its runs
    first. Paired over users, because two models ranking the same users share most of their
    per-user variance: the unpaired standard errors of two means (±0.006 NDCG@10 on ML-100k) hide
    a difference the paired one (±0.001 there) resolves.
    """
    if not a or not b:
        raise ValueError("paired_difference needs at least one run of each model")
    n = {r.size for r in (*a, *b)}
    if len(n) != 1:
        raise ValueError(f"runs rank different numbers of users: {sorted(n)}")
    users = n.pop()
    # [2, users] per model: hit@k and NDCG@k, averaged over its runs.
    ga = np.mean([per_user_gains(r, k) for r in a], axis=0)
    gb = np.mean([per_user_gains(r, k) for r in b], axis=0)
    out: dict[str, tuple[float, float]] = {}
    for d, key in zip(ga - gb, (f"hr@{k}", f"ndcg@{k}"), strict=True):
        se = float(d.std(ddof=1) / np.sqrt(users)) if users > 1 else 0.0
        out[key] = (float(d.mean()), se)
    return out
