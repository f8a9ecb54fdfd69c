"""The ``sid`` stage: items → unique semantic IDs, their token vocabulary, and a report.

Recipe: read the data stage's items; get L-level codes (embed the item texts with Ray Data and run
RQ-KMeans, or take the codes the dataset ships); append the collision-disambiguation level; write
``sid_table.parquet``, ``vocab.json``, ``embeddings.parquet`` (when embedded) and
``sid_report.json``.
Later stages call :func:`load_sid_artifacts` rather than reading the files themselves.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage
from sgrec_ray.config import SidSection
from sgrec_ray.data.schema import (
    EMBEDDINGS_FILE,
    ITEM_VECTORS_FILE,
    ITEMS_FILE,
    TRAIN_FILE,
    embeddings_table,
    read_vectors,
)
from sgrec_ray.runs import RunContext, StageResult
from sgrec_ray.sid.embed import embed_items, item_texts
from sgrec_ray.sid.rqkmeans import kmeans_method, resolve_collisions, rq_kmeans
from sgrec_ray.sid.trie import SidTrie, SidVocab

STAGE = "sid"
SID_TABLE_FILE = "sid_table.parquet"
VOCAB_FILE = "vocab.json"
REPORT_FILE = "sid_report.json"
# In <run>/data/, from a loader whose dataset ships its own SIDs (MiniOneRec): item_idx, codes.
PRECOMPUTED_FILE = "sid_codes.parquet"

SID_TABLE = pa.schema(
    [
        ("item_idx", pa.int32()),
        ("item_id", pa.string()),
        (
            "sid",
            pa.string(),
        ),  # e.g. <a_12><b_3><c_20><d_0>; the last level disambiguates collisions
        ("codes", pa.list_(pa.int32())),
    ]
)


def _read_items(ctx: RunContext) -> pa.Table:
    items = storage.read_table(ctx.path("data", ITEMS_FILE)).sort_by("item_idx")
    idx = items.column("item_idx").to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        raise ValueError(f"{ctx.path('data', ITEMS_FILE)}: item_idx must be dense 0..n_items-1")
    return items


def _codes_matrix(column: pa.ChunkedArray | pa.Array, n_items: int, where: str) -> np.ndarray:
    lengths = set(pc.list_value_length(column).to_pylist())
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            f"{where}: every item needs the same number of codes, got lengths {lengths}"
        )
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.astype(np.int64).reshape(n_items, lengths.pop())


def _precomputed_codes(
    ctx: RunContext, cfg: SidSection, n_items: int
) -> tuple[np.ndarray, list[int]]:
    """The dataset's own codes [n_items, L] and level sizes (at least ``cfg.codes`` each)."""
    uri = ctx.path("data", PRECOMPUTED_FILE)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"sid.method=precomputed needs {uri} (item_idx, codes), written by a loader whose data "
            f"ships SIDs (data.source=minionerec with an index/*.index.json); it is absent. "
            f"Use sid.method=rq_kmeans to build SIDs from item text instead."
        )
    table = storage.read_table(uri).sort_by("item_idx")
    idx = table.column("item_idx").to_numpy()
    if not np.array_equal(idx, np.arange(n_items)):
        missing = len(np.setdiff1d(np.arange(n_items), idx))
        raise ValueError(
            f"{uri}: needs one row per item 0..{n_items - 1}; {missing} items have no codes, "
            f"{len(idx) - len(np.unique(idx))} are repeated, "
            f"{int((idx >= n_items).sum() + (idx < 0).sum())} are not in the catalogue. "
            f"Use sid.method=rq_kmeans to build SIDs for every item from its text."
        )
    codes = _codes_matrix(table.column("codes"), n_items, uri)
    if (codes < 0).any():
        raise ValueError(f"{uri}: negative codes")
    sizes = [max(cfg.codes, int(codes[:, lv].max()) + 1) for lv in range(codes.shape[1])]
    return codes, sizes


def _embed_and_quantise(
    ctx: RunContext, items: pa.Table, cfg: SidSection
) -> tuple[np.ndarray, list[int], dict[str, Any], str]:
    """Quantise the vectors ``sid.source`` names; the text embeddings are written in any case
    (the judge's hard negatives and the embedding judge read them)."""
    t0 = time.time()
    emb = embed_items(items, cfg)
    embed_s = time.time() - t0
    emb_uri = ctx.path(STAGE, EMBEDDINGS_FILE)
    storage.write_table(emb_uri, embeddings_table(items.column("item_idx").to_numpy(), emb))
    info: dict[str, Any] = {
        "source": cfg.source,
        "embedding_model": cfg.embedding_model,
        "embedding_dim": int(emb.shape[1]),
        "embed_seconds": round(embed_s, 2),
        "items_without_text": item_texts(items)[1],
    }
    if cfg.source != "text":
        cf = read_vectors(ctx.path("sasrec", ITEM_VECTORS_FILE), items.num_rows)
        emb = quantisation_input(emb, cf, cfg.source, cfg.cf_weight)
        info["cf_dim"] = int(cf.shape[1])
    t0 = time.time()
    rq = rq_kmeans(
        emb,
        cfg.levels,
        cfg.codes,
        n_init=cfg.kmeans_n_init,
        seed=cfg.seed,
        method=cfg.kmeans,
        minibatch_above=cfg.kmeans_minibatch_above,
        batch_size=cfg.kmeans_batch_size,
    )
    info["kmeans_seconds"] = round(time.time() - t0, 2)
    info["kmeans"] = kmeans_method(emb.shape[0], cfg.kmeans, cfg.kmeans_minibatch_above)
    info["clusters_fitted"] = rq.clusters_fitted
    info["quant_error"] = [round(q, 6) for q in rq.quant_error]
    return rq.codes.astype(np.int64), [cfg.codes] * cfg.levels, info, emb_uri


def quantisation_input(
    text: np.ndarray, cf: np.ndarray, source: str, cf_weight: float
) -> np.ndarray:
    """What RQ-KMeans clusters for ``source`` cf / hybrid (text needs no mixing).

    Both parts are L2-normalised first, so ``cf_weight`` alone sets their balance: with weights
    sqrt(1 - w) and sqrt(w), a squared distance is (1 - w) x text distance + w x cf distance.
    """

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if source == "cf":
        return unit(cf)
    if not 0.0 <= cf_weight <= 1.0:
        raise ValueError(f"sid.cf_weight must be in [0, 1], got {cf_weight}")
    return np.concatenate([np.sqrt(1 - cf_weight) * unit(text), np.sqrt(cf_weight) * unit(cf)], 1)


def first_code_share(codes: np.ndarray, train: pa.Table) -> dict[str, float]:
    """Do SID prefixes group co-consumed items? Share of consecutive train events whose items share
    their first code, and the share expected by chance (two events drawn independently).

    Each (previous, next) pair is read once: at the supervised positions of the training windows.
    """
    same = total = 0
    first = codes[:, 0]
    counts = np.zeros(int(first.max()) + 1)
    for items, loss_from in zip(
        train.column("items").to_pylist(), train.column("loss_from").to_pylist(), strict=True
    ):
        c = first[np.asarray(items, dtype=np.int64)]
        lo = max(int(loss_from), 1)
        same += int((c[lo:] == c[lo - 1 : -1]).sum())
        total += max(len(c) - lo, 0)
        np.add.at(counts, c[lo:], 1)
    p = counts / max(counts.sum(), 1)
    return {
        "first_code_consecutive_share": round(same / max(total, 1), 4),
        "first_code_chance_share": round(float((p**2).sum()), 4),
    }


def run(ctx: RunContext) -> StageResult:
    """Build the run's semantic IDs; see the module docstring."""
    cfg = ctx.cfg.sid
    items = _read_items(ctx)
    n = items.num_rows
    outputs: dict[str, str] = {}
    if cfg.method == "precomputed":
        base, sizes = _precomputed_codes(ctx, cfg, n)
        info: dict[str, Any] = {}
    else:
        base, sizes, info, outputs["embeddings"] = _embed_and_quantise(ctx, items, cfg)

    codes, collisions = resolve_collisions(base)
    train_uri = ctx.path("data", TRAIN_FILE)
    if storage.exists(train_uri):  # a catalogue-only run (no logs yet) still gets its SIDs
        info.update(first_code_share(base, storage.read_table(train_uri)))
    vocab = SidVocab(level_sizes=[*sizes, collisions.max_group_size])
    SidTrie(codes, vocab)  # validates: unique, in range (the loader rebuilds it)
    report: dict[str, Any] = {
        "method": cfg.method,
        "n_items": n,
        "levels": base.shape[1],
        "depth": vocab.depth,
        "level_sizes": vocab.level_sizes,
        "vocab_size": vocab.vocab_size,
        **collisions.to_dict(),
        "utilisation": [
            round(len(np.unique(base[:, lv])) / sizes[lv], 4) for lv in range(base.shape[1])
        ],
        **info,
    }

    sids = [vocab.sid_string(row) for row in codes]
    table = pa.table(
        {
            "item_idx": items.column("item_idx").cast(pa.int32()),
            "item_id": items.column("item_id").cast(pa.string()),
            "sid": pa.array(sids, pa.string()),
            "codes": pa.array(codes.astype(np.int32).tolist(), pa.list_(pa.int32())),
        },
        schema=SID_TABLE,
    )
    outputs["sid_table"] = ctx.path(STAGE, SID_TABLE_FILE)
    outputs["vocab"] = ctx.path(STAGE, VOCAB_FILE)
    outputs["report"] = ctx.path(STAGE, REPORT_FILE)
    storage.write_table(outputs["sid_table"], table)
    storage.write_text(outputs["vocab"], vocab.to_json())
    storage.write_json(outputs["report"], report)
    print(format_report(report))
    return StageResult(outputs=outputs, metrics=report)


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the console: levels, collisions before/after, utilisation per level."""
    util = " ".join(f"{u:.0%}" for u in report["utilisation"])
    lines = [
        f"sid: {report['n_items']} items, method {report['method']} "
        f"({report.get('source', 'dataset codes')}), "
        f"{report['levels']} levels x {report['level_sizes'][:-1]} + disambiguation level of "
        f"{report['max_group_size']} (vocab {report['vocab_size']})",
        f"sid: collisions before {report['collision_rate_before']:.2%} "
        f"({report['colliding_groups']} shared SIDs), after {report['collision_rate_after']:.2%}",
        f"sid: codebook utilisation per level {util}",
    ]
    if "first_code_consecutive_share" in report:
        lines.append(
            f"sid: consecutive train events sharing a first code "
            f"{report['first_code_consecutive_share']:.1%} "
            f"(chance {report['first_code_chance_share']:.1%})"
        )
    if "embed_seconds" in report:
        lines.append(
            f"sid: embedded with {report['embedding_model']} in {report['embed_seconds']}s, "
            f"k-means {report['kmeans_seconds']}s, "
            f"quantisation error per level {report['quant_error']}"
        )
    return "\n".join(lines)


def load_sid_artifacts(ctx: RunContext) -> tuple[np.ndarray, SidVocab, SidTrie]:
    """Codes, vocabulary and trie of a finished sid stage.

    Returns (codes int64 [n_items, depth] with row i = item_idx i, SidVocab, SidTrie).
    """
    table = storage.read_table(ctx.path(STAGE, SID_TABLE_FILE)).sort_by("item_idx")
    n = table.num_rows
    if not np.array_equal(table.column("item_idx").to_numpy(), np.arange(n)):
        raise ValueError(f"{ctx.path(STAGE, SID_TABLE_FILE)}: item_idx must be dense 0..n_items-1")
    codes = _codes_matrix(table.column("codes"), n, ctx.path(STAGE, SID_TABLE_FILE))
    vocab = SidVocab.from_json(storage.read_text(ctx.path(STAGE, VOCAB_FILE)))
    return codes, vocab, SidTrie(codes, vocab)
