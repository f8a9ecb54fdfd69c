"""Synthetic interaction logs of any size, in the layout the ``generic`` loader reads.

Why: nothing was measured beyond ML-100k's 100,000 events. These logs let the data stage (and the
stages after it) be timed at 10^5..10^8 events with the shapes real logs have:

- **Zipf item popularity** inside each topic (items ``k`` with ``k % n_topics == t`` form topic
  ``t``; the ``r``-th item of a topic is drawn with probability ~ ``1 / (r + 1) ** zipf_s``);
- **heavy-tailed user activity**: log-normal user weights, events drawn multinomially, so a few users
  have thousands of events and most have a handful;
- **sessions whose topic drifts**: a user's events form sessions (geometric lengths); each session
  keeps one topic, the next session's topic is a small random step away (or a jump), so a user's
  recent interests differ from their old ones;
- an **item catalogue with text**: title, genres (the topic's name) and a description.

Events are written in time order into ``shards`` Parquet files by time window (as daily log
partitions are), so one user's events span several shards. Generation is vectorised numpy in user
chunks of about ``chunk_events`` events (memory stays bounded at any size); each chunk appends one
row group to every shard. Deterministic: the same arguments give byte-identical files.

A few deliberately bad rows of every reason :mod:`sgrec_ray.data.validate` knows for events and
items (``bad_rows`` each) are mixed in, so validation is exercised at scale: missing ids, a null
timestamp, an infinite rating / value, an item not in the catalogue, an exact duplicate event, a
catalogue row without id and a repeated catalogue id.

Output (``out`` is any URI)::

    out/events/part-00000.parquet ...   user_id, item_id (strings), timestamp (int64 s),
                                        rating (float32, 1..5), value (float32, price paid)
    out/items.parquet                   item_id, title, genres, description, price

Read it with ``data.source=generic data.path=out/events data.items_path=out/items.parquet
data.columns.value=value data.item_text_fields=[title,genres]``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sgrec_ray import storage

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
ITEMS_FILE = "items.parquet"
T0 = 1_600_000_000  # 2020-09-13, epoch seconds
SPAN_S = 365 * 86_400  # first events of users spread over a year

_ADJECTIVES = (
    "quiet", "bright", "silent", "golden", "hidden", "lost", "wild", "broken", "last", "little",
    "red", "blue", "dark", "electric", "frozen", "gentle", "hollow", "iron", "lucky", "paper",
)  # fmt: skip
_NOUNS = (
    "river", "garden", "machine", "letter", "island", "city", "engine", "forest", "mirror", "road",
    "signal", "tower", "voyage", "winter", "harbor", "window", "kingdom", "echo", "orbit", "stone",
)  # fmt: skip
_TOPIC_WORDS = (
    "Drama", "Comedy", "Travel", "Cooking", "Science", "History", "Music", "Sports", "Fantasy",
    "Mystery", "Gardening", "Finance", "Design", "Poetry", "Gaming", "Health", "Nature", "Crime",
    "Space", "Art",
)  # fmt: skip

EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("rating", pa.float32()),
        ("value", pa.float32()),
    ]
)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. ``n_users`` / ``n_items`` default to events/50 and events/100."""

    n_events: int
    n_users: int | None = None
    n_items: int | None = None
    n_topics: int = 50
    shards: int | None = None  # None: one shard per ~1M events
    seed: int = 0
    zipf_s: float = 1.05
    activity_sigma: float = 1.2  # log-normal sigma of user activity (heavier tail when larger)
    mean_session: float = 8.0  # events per session (geometric)
    bad_rows: int = 3  # rows of each reject reason
    chunk_events: int = 2_000_000

    def resolved(self) -> SynthSpec:
        if self.n_events < 1:
            raise ValueError(f"n_events must be >= 1, got {self.n_events}")
        users = self.n_users or max(1, self.n_events // 50)
        items = self.n_items or max(self.n_topics, self.n_events // 100)
        shards = self.shards or max(1, math.ceil(self.n_events / 1_000_000))
        return SynthSpec(
            self.n_events, users, items, min(self.n_topics, items), shards, self.seed,
            self.zipf_s, self.activity_sigma, self.mean_session, self.bad_rows, self.chunk_events,
        )  # fmt: skip


def topic_names(n_topics: int) -> list[str]:
    """Readable, distinct topic names: "Drama", ..., "Art", "Drama 2", ..."""
    return [
        _TOPIC_WORDS[t % len(_TOPIC_WORDS)]
        + ("" if t < len(_TOPIC_WORDS) else f" {t // len(_TOPIC_WORDS) + 1}")
        for t in range(n_topics)
    ]


def item_ids(n_items: int, seed: int) -> np.ndarray:
    """item_id number of each item index: a seeded permutation of 1..n, so popularity is not id order."""
    return np.random.default_rng([seed, 1]).permutation(n_items) + 1


def items_table(spec: SynthSpec) -> pa.Table:
    """The catalogue: item_id, title, genres (topic name), description, price; catalogue order."""
    n, topics = spec.n_items or 0, spec.n_topics
    rng = np.random.default_rng([spec.seed, 2])
    idx = np.arange(n)
    adj = np.asarray(_ADJECTIVES, dtype=object)[rng.integers(0, len(_ADJECTIVES), n)]
    noun = np.asarray(_NOUNS, dtype=object)[rng.integers(0, len(_NOUNS), n)]
    names = np.asarray(topic_names(topics), dtype=object)
    genre = names[idx % topics]
    title = adj + " " + noun + " " + (idx // topics + 1).astype(str).astype(object)
    title = np.char.title(title.astype(str)).astype(object)
    description = (
        "A " + adj + " " + genre.astype(str).astype(object) + " story about a " + noun + "."
    )
    price = np.round(rng.lognormal(2.0, 0.8, n), 2).astype(np.float32)
    return pa.table(
        {
            "item_id": pa.array(item_ids(n, spec.seed).astype(str), pa.string()),
            "title": pa.array(title.tolist(), pa.string()),
            "genres": pa.array(genre.tolist(), pa.string()),
            "description": pa.array(description.tolist(), pa.string()),
            "price": pa.array(price, pa.float32()),
        }
    )


def user_event_counts(spec: SynthSpec) -> np.ndarray:
    """Events per user (heavy-tailed, every user >= 1 when n_events >= n_users); sums to n_events."""
    n_users = spec.n_users or 1
    rng = np.random.default_rng([spec.seed, 3])
    weights = rng.lognormal(0.0, spec.activity_sigma, n_users)
    base = min(1, spec.n_events // n_users)
    counts = rng.multinomial(spec.n_events - base * n_users, weights / weights.sum())
    return counts + base


def _chunks(counts: np.ndarray, chunk_events: int) -> list[tuple[int, int]]:
    """User ranges [a, b) holding about ``chunk_events`` events each."""
    ends = np.cumsum(counts)
    out, start = [], 0
    while start < len(counts):
        done = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, done + chunk_events, side="left")) + 1
        stop = min(max(stop, start + 1), len(counts))
        out.append((start, stop))
        start = stop
    return out


def chunk_events(
    spec: SynthSpec, users: tuple[int, int], counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Events of users ``[a, b)``: user index, item index, timestamp, rating, value (time order
    within each user). Pure and seeded by (seed, a), so chunks can be made in any order."""
    a, b = users
    n_items, topics = spec.n_items or 1, spec.n_topics
    rng = np.random.default_rng([spec.seed, 4, a])
    per_user = counts[a:b]
    n = int(per_user.sum())
    user = np.repeat(np.arange(a, b, dtype=np.int64), per_user)
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    first = np.zeros(n, dtype=bool)
    first[starts[per_user > 0]] = True

    # Sessions: a new one at each user's first event and with probability 1/mean_session after.
    new_session = first | (rng.random(n) < 1.0 / spec.mean_session)
    session = np.cumsum(new_session) - 1
    n_sessions = int(session[-1]) + 1 if n else 0
    # The topic drifts by a small step per session (a jump to any topic now and then).
    steps = rng.choice(np.array([-1, 0, 0, 1]), n_sessions)
    jumps = rng.random(n_sessions) < 0.1
    steps = np.where(jumps, rng.integers(0, topics, n_sessions), steps)
    walk = np.cumsum(steps)
    session_first_event = np.flatnonzero(new_session)
    user_of_session = user[session_first_event]
    base_topic = np.random.default_rng([spec.seed, 5]).integers(0, topics, spec.n_users or 1)
    # Restart the walk at each user's first session: subtract the walk just before it.
    is_user_start = first[session_first_event]
    offset = np.maximum.accumulate(np.where(is_user_start, np.arange(n_sessions), 0))
    walk_before = np.where(offset > 0, walk[offset - 1], 0)
    topic_of_session = (base_topic[user_of_session] + walk - walk_before) % topics
    topic = topic_of_session[session]

    # Item: the r-th most popular item of the topic, r ~ Zipf over the topic's items.
    per_topic = math.ceil(n_items / topics)
    cdf = np.cumsum(1.0 / np.arange(1, per_topic + 1) ** spec.zipf_s)
    rank = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    item = rank * topics + topic
    item = np.where(item < n_items, item, topic)  # the last row of topics can be short

    # Time: a user's first event somewhere in the year, seconds apart within a session, about a
    # day apart between sessions. Integer seconds, so same-second ties occur (as in real logs).
    gaps = np.where(new_session, rng.exponential(86_400.0, n), rng.exponential(90.0, n))
    gaps = np.where(first, 0.0, gaps).astype(np.int64)
    elapsed = np.cumsum(gaps)
    elapsed = elapsed - np.repeat(elapsed[starts[per_user > 0]], per_user[per_user > 0])
    start_time = T0 + np.random.default_rng([spec.seed, 6]).integers(0, SPAN_S, spec.n_users or 1)
    timestamp = start_time[user] + elapsed
    rating = np.clip(np.round(rng.normal(3.6, 1.0, n)), 1, 5).astype(np.float32)
    value = np.round(rng.lognormal(2.0, 0.8, n), 2).astype(np.float32)
    return {"user": user, "item": item, "timestamp": timestamp, "rating": rating, "value": value}


def _events_table(ev: dict[str, np.ndarray], ids: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(ev["user"].astype(str), pa.string()),
            "item_id": pa.array(ids[ev["item"]].astype(str), pa.string()),
            "timestamp": pa.array(ev["timestamp"], pa.int64()),
            "rating": pa.array(ev["rating"], pa.float32()),
            "value": pa.array(ev["value"], pa.float32()),
        },
        schema=EVENTS_SCHEMA,
    )


def bad_event_rows(spec: SynthSpec, good: pa.Table) -> pa.Table:
    """``bad_rows`` rows per event reject reason, made from real rows of ``good`` (so each has
    exactly one fault): missing user, missing item, null timestamp, infinite rating, infinite
    value, an item id not in the catalogue, and exact duplicates of earlier rows."""
    k = min(spec.bad_rows, good.num_rows)
    if k == 0:
        return good.schema.empty_table()
    base = good.slice(0, k).to_pydict()
    rows: list[dict] = []
    for i in range(k):
        row = {c: base[c][i] for c in base}
        rows += [
            {**row, "user_id": None},
            {**row, "item_id": None},
            {**row, "timestamp": None},
            {**row, "rating": float("inf")},
            {**row, "value": float("-inf")},
            {**row, "item_id": f"no-such-item-{i}"},
            dict(row),  # the duplicate: same user, item and timestamp as an earlier row
        ]
    return pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)


def bad_item_rows(spec: SynthSpec, items: pa.Table) -> pa.Table:
    """``bad_rows`` catalogue rows without an id and as many repeating an earlier id."""
    k = min(spec.bad_rows, items.num_rows)
    head = items.slice(0, k).to_pylist()
    rows = [{**r, "item_id": None} for r in head] + [dict(r, title="(repeated)") for r in head]
    return pa.Table.from_pylist(rows, schema=items.schema)


def write(out: str, spec: SynthSpec, progress: bool = True) -> dict:
    """Write the log and catalogue under ``out`` (any URI); return the figures as a dict."""
    spec = spec.resolved()
    started = time.time()
    counts = user_event_counts(spec)
    ids = item_ids(spec.n_items or 0, spec.seed).astype(str)
    items = items_table(spec)
    storage.write_table(
        storage.join(out, ITEMS_FILE), pa.concat_tables([items, bad_item_rows(spec, items)])
    )
    shards = spec.shards or 1
    # Shard by time window: the span every event can fall in, cut into equal windows.
    edges = np.linspace(T0, T0 + SPAN_S * 2, shards + 1)[1:-1]
    events_dir = storage.join(out, EVENTS_DIR)
    fs, root = storage.filesystem(events_dir)
    fs.create_dir(root, recursive=True)
    writers = [
        pq.ParquetWriter(f"{root}/part-{s:05d}.parquet", EVENTS_SCHEMA, filesystem=fs)
        for s in range(shards)
    ]
    written = 0
    try:
        chunks = _chunks(counts, spec.chunk_events)
        for c, users in enumerate(chunks):
            ev = chunk_events(spec, users, counts)
            order = np.argsort(ev["timestamp"], kind="stable")  # a log is appended in time order
            table = _events_table(ev, ids).take(pa.array(order))
            if c == 0:
                table = pa.concat_tables([table, bad_event_rows(spec, table)])
            shard = np.searchsorted(edges, table.column("timestamp").fill_null(T0).to_numpy())
            for s in range(shards):
                part = table.filter(pa.array(shard == s))
                if part.num_rows:
                    writers[s].write_table(part)
            written += table.num_rows
            if progress:
                log.info("synth: %d/%d chunks, %d rows", c + 1, len(chunks), written)
    finally:
        for w in writers:
            w.close()
    return {
        "events": spec.n_events,
        "rows_written": written,
        "users": spec.n_users,
        "items": spec.n_items,
        "topics": spec.n_topics,
        "shards": shards,
        "seed": spec.seed,
        "bad_rows_per_reason": spec.bad_rows,
        "seconds": round(time.time() - started, 1),
        "events_uri": events_dir,
        "items_uri": storage.join(out, ITEMS_FILE),
    }


def data_overrides(out: str) -> list[str]:
    """``--set`` overrides that point the data stage at a log written by :func:`write`."""
    return [
        "data.source=generic",
        f"data.path={storage.join(out, EVENTS_DIR)}",
        f"data.items_path={storage.join(out, ITEMS_FILE)}",
        "data.columns.rating=rating",
        "data.columns.value=value",
        "data.item_text_fields=[title, genres]",
        "data.max_users=null",
    ]
