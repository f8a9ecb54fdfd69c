"""Candidate sets for the judge: per user the true next item plus negatives of known origin.

Origins (in priority order; an item keeps the first origin that picked it, so the set has no
duplicates): ``target`` (the held-out next item), ``beam`` (the SFT generator's top beams, what
A2PO will sample), ``hard`` (nearest to the target by item embedding, or by shared SID prefix when
the run has no embeddings), ``random`` (uniform, seeded per user). Negatives are never the target
or an item the user has already seen. The judge stage may add ``pair`` rows: the items of the same
users' Stage B pairs, each judged in its pair's own context (``pairs.pair_histories``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage
from sgrec_ray.config import JudgeSection
from sgrec_ray.data import schema
from sgrec_ray.eval.stage import SampleFile
from sgrec_ray.generator.decode import Recommender
from sgrec_ray.runs import RunContext
from sgrec_ray.sid.stage import SID_TABLE_FILE

ORIGINS = ("target", "beam", "hard", "random", "pair")

CANDIDATES = pa.schema(
    [
        ("user_id", pa.string()),
        ("history", pa.list_(pa.int32())),  # oldest first
        ("timestamp", pa.int64()),  # of the target event (null for the train split)
        ("item_idx", pa.int32()),
        ("origin", pa.string()),
        ("split", pa.string()),
    ]
)


class Neighbours:
    """Items most similar to a given item: cosine over embeddings, or shared leading SID codes."""

    def __init__(self, vectors: np.ndarray | None = None, codes: np.ndarray | None = None) -> None:
        if vectors is None and codes is None:
            raise ValueError("Neighbours needs embeddings or SID codes")
        self.vectors, self.codes = vectors, codes

    def similarity(self, item: int) -> np.ndarray:
        """Similarity of every item to ``item``: ``[n_items]``, higher is nearer."""
        if self.vectors is not None:
            return self.vectors @ self.vectors[item]
        same = self.codes == self.codes[item]  # [n_items, L]
        return np.cumprod(same, axis=1).sum(axis=1).astype(np.float64)  # shared prefix length

    def nearest(self, item: int, k: int, exclude: set[int]) -> list[int]:
        sims = self.similarity(item).astype(np.float64)
        order = np.argsort(-sims, kind="stable")  # ties: lower item_idx first (deterministic)
        return [int(i) for i in order if int(i) not in exclude and i != item][:k]


def load_neighbours(ctx: RunContext) -> Neighbours:
    """The sid stage's item embeddings (L2-normalised), else its SID codes."""
    uri = ctx.path("sid", schema.EMBEDDINGS_FILE)
    if storage.exists(uri):
        table = storage.read_table(uri).sort_by("item_idx")
        flat = pc.list_flatten(table.column("embedding")).to_numpy(zero_copy_only=False)
        return Neighbours(vectors=flat.astype(np.float32).reshape(table.num_rows, -1))
    table = storage.read_table(ctx.path("sid", SID_TABLE_FILE)).sort_by("item_idx")
    flat = pc.list_flatten(table.column("codes")).to_numpy(zero_copy_only=False)
    return Neighbours(codes=flat.astype(np.int64).reshape(table.num_rows, -1))


SAMPLE_BATCH_ROWS = 1024  # users per batch while candidates are built (beams, negatives)


def sample_batches(
    ctx: RunContext, cfg: JudgeSection, batch_rows: int = SAMPLE_BATCH_ROWS
) -> Iterator[pa.Table]:
    """SAMPLES rows (user_id, history, target, timestamp, seen) of ``judge.split``, first
    max_users, in batches: the valid/test split streams from its Parquet file, never whole.

    ``train``: each user's last training window, its last item the target. Windows need not be
    grouped by user (the temporal split orders them by time), so the train split streams through
    a dict of one window per user.
    """
    if cfg.split != "train":
        split = SampleFile(ctx.path("data", f"{cfg.split}.parquet"), cfg.max_users)
        for batch in split.batches(schema.SAMPLES.names, batch_rows):
            yield pa.Table.from_batches([batch]).cast(schema.SAMPLES)
        return
    last: dict[str, list[int]] = {}
    for batch in storage.iter_batches(ctx.path("data", schema.TRAIN_FILE), ["user_id", "items"]):
        for user, items in zip(
            batch.column("user_id").to_pylist(), batch.column("items").to_pylist(), strict=True
        ):
            last[user] = items  # rows are in time order per user: the last one wins
    users = [u for u, items in last.items() if len(items) >= 1]
    if cfg.max_users is not None:
        users = users[: cfg.max_users]
    for lo in range(0, len(users), batch_rows):
        part = users[lo : lo + batch_rows]
        yield pa.table(
            {
                "user_id": part,
                "history": [last[u][:-1] for u in part],
                "target": [last[u][-1] for u in part],
                "timestamp": pa.nulls(len(part), pa.int64()),
                "seen": [last[u][:-1] for u in part],
            },
            schema=schema.SAMPLES,
        )


def sft_beams(model_uri: str, samples: pa.Table, k: int, batch_size: int = 64) -> list[list[int]]:
    """The SFT generator's top-``k`` unseen items per sample (constrained beam search)."""
    rec = Recommender.load(model_uri, batch_size=batch_size)
    histories = samples.column("history").to_pylist()
    seen = [set(s) for s in samples.column("seen").to_pylist()]
    out = rec.recommend(histories, k=k, exclude=seen)
    return [[int(i) for i, _ in row] for row in out]


def _rng(seed: int, user_id: str) -> np.random.Generator:
    # Per-user streams: a user's negatives do not change when other users are added or removed.
    return np.random.default_rng([seed, zlib.crc32(user_id.encode())])


def random_items(rng: np.random.Generator, n_items: int, k: int, exclude: set[int]) -> list[int]:
    """``k`` distinct items not in ``exclude`` (fewer if the catalogue runs out)."""
    free = n_items - len(exclude)
    if k <= 0 or free <= 0:
        return []
    if free < 4 * k:  # small catalogue: sample from the explicit complement
        pool = np.setdiff1d(np.arange(n_items), np.fromiter(exclude, int, len(exclude)))
        return [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]
    picked: list[int] = []
    while len(picked) < k:
        i = int(rng.integers(n_items))
        if i not in exclude and i not in picked:
            picked.append(i)
    return picked


def build_candidates(
    samples: pa.Table,
    n_items: int,
    *,
    n_random: int,
    n_hard: int,
    split: str,
    seed: int,
    neighbours: Neighbours | None = None,
    beams: Sequence[Sequence[int]] | None = None,
) -> pa.Table:
    """One row per (user, candidate) in :data:`CANDIDATES`; users in sample order, target first."""
    if n_hard > 0 and neighbours is None:
        raise ValueError("n_hard > 0 needs neighbours (item embeddings or SID codes)")
    rows: dict[str, list] = {name: [] for name in CANDIDATES.names}
    columns = zip(
        samples.column("user_id").to_pylist(),
        samples.column("history").to_pylist(),
        samples.column("target").to_pylist(),
        samples.column("timestamp").to_pylist(),
        samples.column("seen").to_pylist(),
        strict=True,
    )
    for u, (user, history, target, stamp, seen) in enumerate(columns):
        chosen: dict[int, str] = {int(target): "target"}
        blocked = set(map(int, seen)) | {int(target)}
        for item in beams[u] if beams is not None else []:
            if int(item) not in blocked:  # a beam equal to the target stays a "target" row
                chosen.setdefault(int(item), "beam")
        if n_hard > 0 and neighbours is not None:
            for item in neighbours.nearest(int(target), n_hard, blocked | set(chosen)):
                chosen[item] = "hard"
        for item in random_items(_rng(seed, str(user)), n_items, n_random, blocked | set(chosen)):
            chosen[item] = "random"
        for item, origin in chosen.items():
            rows["user_id"].append(str(user))
            rows["history"].append(history)
            rows["timestamp"].append(stamp)
            rows["item_idx"].append(item)
            rows["origin"].append(origin)
            rows["split"].append(split)
    return pa.table(rows, schema=CANDIDATES)
