"""Residual k-means (RQ-KMeans) semantic IDs and collision resolution. Pure numpy/sklearn, no Ray.

Level 1 clusters the item embeddings into K codes; level 2 clusters what level 1 failed to explain
(the residual ``x - centroid``), and so on, so an item's L codes form a coarse-to-fine description
of its embedding and items sharing a prefix are semantically close. That is what lets a generator
that decodes SIDs token by token generalise across items.

L codes of K values cannot guarantee uniqueness (two near-identical titles land on the same path),
so :func:`resolve_collisions` appends one disambiguation level: the rank of the item among the items
sharing its L-level prefix (ordered by ``item_idx``). Every SID is then unique, which the trie and
the generator's "one SID = one item" contract need.

Two k-means engines, chosen by catalogue size (``method="auto"``): the exact one (scikit-learn
``KMeans`` with ``n_init`` restarts over float64 residuals) for catalogues up to
``minibatch_above`` items, which is what every figure in docs/ was built with (ML-100k's 1,682
items); and mini-batch k-means over float32 residuals beyond, where a full Lloyd pass per
iteration over 10^6 x 384 float64 (3 GB per copy) would cost minutes and several copies of the
embeddings in memory.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus

# Residual rows closer than this (after rounding) count as the same point when deciding how many
# clusters a level can hold; float noise must not make identical items look distinct.
_DISTINCT_DECIMALS = 6

KMEANS_METHODS = ("auto", "exact", "minibatch")
MINIBATCH_ABOVE = 50_000  # auto: exact k-means up to this many items, mini-batch beyond
_CHUNK_ROWS = 65_536  # rows per step when updating residuals in place (bounds the temporaries)


@dataclass
class RQResult:
    """RQ-KMeans output before collision resolution.

    codes: int32 [n_items, levels]; row i belongs to item_idx i.
    utilisation: per level, distinct codes used / K.
    quant_error: per level, mean squared norm of the residual left after that level (decreasing).
    """

    codes: np.ndarray
    utilisation: list[float] = field(default_factory=list)
    quant_error: list[float] = field(default_factory=list)
    clusters_fitted: list[int] = field(default_factory=list)  # K actually used per level (<= K)


@dataclass
class CollisionReport:
    """How many items share an L-level SID before the disambiguation level, and after (always 0)."""

    collision_rate_before: float  # share of items whose L-level SID is shared with another item
    collision_rate_after: float
    max_group_size: (
        int  # largest set of items sharing one L-level SID (>= 1): the extra level's size
    )
    colliding_groups: int  # number of L-level SIDs held by more than one item

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collision_rate(codes: np.ndarray) -> float:
    """Share of rows of ``codes`` [n, L] that are equal to at least one other row."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return float(counts[counts > 1].sum() / codes.shape[0])


def _n_distinct(x: np.ndarray) -> int:
    return int(np.unique(np.round(x, _DISTINCT_DECIMALS), axis=0).shape[0])


def kmeans_method(
    n_items: int, method: str = "auto", minibatch_above: int = MINIBATCH_ABOVE
) -> str:
    """``exact`` or ``minibatch`` for a catalogue of ``n_items`` (``auto``: by size)."""
    if method not in KMEANS_METHODS:
        raise ValueError(f"unknown k-means method {method!r}; choose one of {list(KMEANS_METHODS)}")
    if method == "auto":
        return "exact" if n_items <= minibatch_above else "minibatch"
    return method


def rq_kmeans(
    embeddings: np.ndarray,
    levels: int,
    codes: int,
    n_init: int = 3,
    seed: int = 0,
    method: str = "auto",
    minibatch_above: int = MINIBATCH_ABOVE,
    batch_size: int = 4096,
) -> RQResult:
    """Quantise ``embeddings`` [n_items, dim] into ``levels`` codes of ``codes`` values each.

    ``method`` picks the k-means engine (see the module docstring; :func:`kmeans_method`);
    ``batch_size`` is the mini-batch size of the ``minibatch`` engine.

    A level whose residuals have fewer distinct points than ``codes`` (tiny catalogues, duplicate
    texts, late levels of an already exact fit) fits only as many clusters as there are distinct
    points: asking scikit-learn for more either fails or yields empty duplicate centroids.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"embeddings must be a non-empty [n_items, dim] array, got {embeddings.shape}"
        )
    if levels < 1 or codes < 1:
        raise ValueError(f"levels and codes must be >= 1, got levels={levels} codes={codes}")
    if kmeans_method(embeddings.shape[0], method, minibatch_above) == "minibatch":
        return _rq_minibatch(embeddings, levels, codes, n_init, seed, batch_size)
    n = embeddings.shape[0]
    # float64 residuals: float32 noise would compound over levels and make runs less reproducible.
    residual = embeddings.astype(np.float64, copy=True)
    out = np.zeros((n, levels), dtype=np.int32)
    result = RQResult(codes=out)
    for level in range(levels):
        k = min(codes, _n_distinct(residual))
        if k <= 1:
            labels = np.zeros(n, dtype=np.int64)
            centers = residual.mean(axis=0, keepdims=True)
        else:
            km = KMeans(n_clusters=k, n_init=n_init, random_state=seed + level)
            with warnings.catch_warnings():
                # Fewer distinct points than k after rounding is handled above; the rest is noise.
                warnings.simplefilter("ignore", category=UserWarning)
                labels = km.fit_predict(residual)
            centers = km.cluster_centers_
        out[:, level] = labels
        residual = residual - centers[labels]
        result.clusters_fitted.append(int(k))
        result.utilisation.append(len(np.unique(labels)) / codes)
        result.quant_error.append(float(np.mean(np.sum(residual**2, axis=1))))
    return result


def _rq_minibatch(
    embeddings: np.ndarray, levels: int, codes: int, n_init: int, seed: int, batch_size: int
) -> RQResult:
    """RQ-KMeans for large catalogues: mini-batch k-means per level, float32 residuals updated in
    place chunk by chunk, so memory stays at ~one float32 copy of the embeddings.

    The distinct-point count of the exact path (a sort of every residual row) is skipped: at this
    size a level has far more distinct points than codes; a level with fewer leaves codes unused,
    which ``utilisation`` reports.
    """
    n = embeddings.shape[0]
    residual = np.array(embeddings, dtype=np.float32, order="C", copy=True)
    out = np.zeros((n, levels), dtype=np.int32)
    result = RQResult(codes=out)
    for level in range(levels):
        k = min(codes, n)
        km = MiniBatchKMeans(
            n_clusters=k,
            init=_plusplus_init(residual, k, n_init, seed + level, batch_size),
            batch_size=batch_size,
            n_init=1,
            random_state=seed + level,
            compute_labels=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            km.fit(residual)
        labels = km.labels_
        centers = km.cluster_centers_.astype(np.float32)
        error = 0.0
        for lo in range(0, n, _CHUNK_ROWS):
            part = residual[lo : lo + _CHUNK_ROWS]
            part -= centers[labels[lo : lo + _CHUNK_ROWS]]
            error += float(np.sum(np.square(part, dtype=np.float64)))
        out[:, level] = labels
        result.clusters_fitted.append(int(k))
        result.utilisation.append(len(np.unique(labels)) / codes)
        result.quant_error.append(error / n)
    return result


def _plusplus_init(x: np.ndarray, k: int, n_init: int, seed: int, batch_size: int) -> np.ndarray:
    """The best of ``n_init`` k-means++ seedings of a float64 sample of ``x`` (float32 [k, dim]).

    What MiniBatchKMeans does itself, but on a float64 copy of the sample: its own k-means++ on
    float32 input upcasts every distance chunk and took most of the fit (8 s of 12 s at 20,000
    items).
    """
    rng = np.random.default_rng(seed)
    size = min(x.shape[0], max(3 * batch_size, 3 * k))
    sample = x[np.sort(rng.choice(x.shape[0], size, replace=False))].astype(np.float64)
    best, best_inertia = None, np.inf
    for r in range(n_init):
        centers, _ = kmeans_plusplus(sample, k, random_state=seed * 1009 + r)
        d2 = (
            np.sum(sample**2, axis=1)[:, None]
            - 2 * sample @ centers.T
            + np.sum(centers**2, axis=1)[None, :]
        )
        inertia = float(np.maximum(d2.min(axis=1), 0).sum())
        if inertia < best_inertia:
            best, best_inertia = centers, inertia
    assert best is not None
    return best.astype(np.float32)


def resolve_collisions(codes: np.ndarray) -> tuple[np.ndarray, CollisionReport]:
    """Append a disambiguation level so every row of ``codes`` [n_items, L] becomes unique.

    The extra code is the item's rank among the items sharing its L-level prefix, in row
    (= ``item_idx``) order, so the first item of a group gets 0 and resolution is deterministic.
    Returns (int32 [n_items, L+1], report).
    """
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty [n_items, levels] array, got {codes.shape}")
    n = codes.shape[0]
    _, group, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    # Rank within group: stable sort by group keeps row order inside each group.
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[group[order]]
    resolved = np.concatenate([codes.astype(np.int32), rank.astype(np.int32)[:, None]], axis=1)

    shared = counts > 1
    report = CollisionReport(
        collision_rate_before=float(counts[shared].sum() / n),
        collision_rate_after=collision_rate(resolved),
        max_group_size=int(counts.max()),
        colliding_groups=int(shared.sum()),
    )
    return resolved, report
