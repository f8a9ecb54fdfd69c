"""The data stage's event log on Ray Data: the driver never holds the log.

Recipe (each step a Ray Data operation over shards or buckets; the driver only sees figures):

1. **Sample**: every input shard is read in parallel (user column only); a few thousand sampled
   user keys give the boundaries of ``K`` buckets, contiguous ranges of users in natural id order,
   about ``rows_per_bucket`` events each.
2. **Validate**: the shards are read again in parallel, in Arrow batches; each batch is validated
   with column operations (:mod:`.batch_validate`: the same reject reasons as the in-memory stage);
   rejected rows go to small part files, clean rows get their bucket.
3. **Per user**: ``groupby(bucket).map_groups`` brings each bucket's rows together (a distributed
   hash shuffle); each bucket removes duplicates, orders every user's events (ties in file order),
   splits leave-one-out and writes its own part of ``interactions``, ``train``, ``valid`` and
   ``test`` (:mod:`.sequences`). Buckets are user ranges, so part ``k`` holds the users after
   part ``k - 1``'s: reading the folder gives the in-memory stage's row order.
4. **Finish**: the driver sums the buckets' figures into ``stats``, writes ``rejects.parquet``
   (item rejects, then event rejects in file order, then user rejects) one shard at a time, and
   the item and user tables (catalogue-sized, as in the in-memory stage).

With one bucket (small logs: ML-100k) every output is one Parquet file, as before; with more, the
event-sized outputs are folders of part files, which ``storage.read_table`` and Ray Data read
as one table. ``max_users`` is a distributed top-N of user keys. ``data.split: temporal`` (one
global cut by time) and minionerec sources (already samples) stay in the in-memory stage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgrec_ray import storage
from sgrec_ray.config import DataSection
from sgrec_ray.data import schema, sequences
from sgrec_ray.data.batch_validate import (
    by_distinct,
    natural_sort_key,
    parse_ids,
    raise_first,
    reject_rows,
    validate_event_batch,
)
from sgrec_ray.data.validate import DUPLICATE_EVENT, DataError, Source, require_columns

log = logging.getLogger(__name__)

BATCH_ROWS = 262_144  # rows per validated batch (a Ray Data block)
SAMPLES_PER_BATCH = 2_000
ROWS_PER_BUCKET = 1_000_000  # events per bucket: sets the number of buckets (and part files)
# Ray Data coalesces up to 1 GiB of blocks into one shuffle-map task by default; that task then
# holds the input and its partitioned copy (2.5 GB peak RSS measured at 10^7 events). 128 MiB
# keeps a worker well under 1 GB and costs a few more (small) tasks.
SHUFFLE_INPUT_BATCH_BYTES = 128 * 2**20
WORK_DIR = "_work"  # scratch inside the stage's attempt folder, removed at the end
EVENT_OUTPUTS = {
    "interactions": schema.INTERACTIONS_FILE,
    "train": schema.TRAIN_FILE,
    "valid": schema.VALID_FILE,
    "test": schema.TEST_FILE,
}
OUTPUT_SCHEMAS = {
    "interactions": schema.INTERACTIONS,
    "train": schema.SEQUENCES,
    "valid": schema.SAMPLES,
    "test": schema.SAMPLES,
}


# --------------------------------------------------------------------------------------------
# Inputs: the event log's shards, read where the task runs


@dataclass(frozen=True)
class EventInput:
    """One shard of the event log: a Parquet or delimited file, or a table already loaded."""

    uri: str
    kind: str  # "parquet" | "csv" | "tsv" | "table"
    string_columns: tuple[str, ...] = ()
    table: pa.Table | None = None  # kind == "table" (sources whose loader parses the files)


def event_inputs(path: str, string_columns: list[str]) -> list[EventInput]:
    """The shards of a generic log: one file, or every Parquet file of a folder in the order
    ``pyarrow.parquet.read_table`` (the in-memory loader) reads them."""
    uri = storage.normalize(path)
    lower = uri.lower().rstrip("/")
    cols = tuple(c for c in string_columns if c)
    if lower.endswith((".csv", ".tsv", ".txt")):
        return [EventInput(uri, "csv" if lower.endswith(".csv") else "tsv", cols)]
    if not storage.exists(uri):
        raise DataError(f"file not found: {uri}")
    names = storage.listdir(uri)
    if not names:
        return [EventInput(uri, "parquet", cols)]
    files = [
        storage.join(uri, n) for n in names if not n.startswith(("_", ".")) and "." in n
    ]  # pyarrow's dataset discovery skips _* and .* names
    if not files:
        raise DataError(f"{uri}: a folder without Parquet files")
    return [EventInput(f, "parquet", cols) for f in files]


def read_batches(
    inp: EventInput, columns: list[str] | None = None
) -> Iterator[tuple[pa.Table, int]]:
    """(raw batch, row number of its first row) over one shard, ``BATCH_ROWS`` rows at a time."""
    if inp.kind == "parquet":
        fs, path = storage.filesystem(inp.uri)
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            offset = 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield pa.Table.from_batches([batch]), offset
                offset += batch.num_rows
            if offset == 0:  # an empty shard still gives one (empty) batch with its columns
                names = columns or pf.schema_arrow.names
                yield pf.schema_arrow.empty_table().select(names), 0
        return
    if inp.kind == "table":
        assert inp.table is not None
        table = inp.table
    else:
        from sgrec_ray.data.loaders import read_delimited

        table = read_delimited(
            inp.uri, delimiter="," if inp.kind == "csv" else "\t",
            string_columns=list(inp.string_columns),
        )  # fmt: skip
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    for offset in range(0, max(table.num_rows, 1), BATCH_ROWS):
        yield table.slice(offset, BATCH_ROWS), offset


def _shard_columns(inp: EventInput, columns: dict[str, str]) -> None:
    """Fail at once, naming the shard, when it lacks a mapped column."""
    if inp.kind == "parquet":
        fs, path = storage.filesystem(inp.uri)
        with fs.open_input_file(path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
    else:
        return  # delimited files and loaded tables are checked where they are read
    require_columns(
        names, list(columns.values()), inp.uri,
        hint="Map your column names with data.columns.<role>=<name> (rating/value may be null).",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Ray Data UDFs (module level: they are pickled to the workers)


def _sample_keys(batch: dict, inputs: list[EventInput], user_col: str) -> Iterator[pa.Table]:
    """Per shard: sampled user keys (evenly spaced rows) and the shard's row count."""
    for i in batch["shard"]:
        inp = inputs[int(i)]
        total, keys = 0, []
        for raw, _ in read_batches(inp, [user_col] if inp.kind == "parquet" else None):
            n = raw.num_rows
            total += n
            if n == 0 or user_col not in raw.column_names:
                continue
            pick = np.unique(np.linspace(0, n - 1, min(n, SAMPLES_PER_BATCH)).astype(np.int64))
            users = parse_ids(
                raw.column(user_col).combine_chunks().take(pa.array(pick))
            ).drop_null()
            keys.append(by_distinct(users, natural_sort_key, pa.binary()))
        keys_arr = pa.concat_arrays(keys) if keys else pa.array([None], pa.binary())
        rows = np.zeros(len(keys_arr), dtype=np.int64)
        rows[0] = total  # the shard's row count rides on its first sampled key
        node = [_node_id()] * len(keys_arr)
        yield pa.table({"ukey": keys_arr, "rows": pa.array(rows), "node": pa.array(node)})


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _validate_shards(
    batch: dict,
    inputs: list[EventInput],
    columns: dict[str, str],
    known: pa.Array,
    boundaries: list[bytes],
    max_key: bytes | None,
    rejects_dir: str,
    error_mode: bool,
) -> Iterator[pa.Table]:
    """Read shards in batches and validate each; rejects go to part files, clean rows on."""
    for i in batch["shard"]:
        shard = int(i)
        inp = inputs[shard]
        _shard_columns(inp, columns)
        for b, (raw, offset) in enumerate(read_batches(inp)):
            if inp.kind != "parquet":
                require_columns(raw.column_names, list(columns.values()), inp.uri)
            rows = np.arange(offset, offset + raw.num_rows, dtype=np.int64)
            if "__row" in raw.column_names:  # a loaded table carries its own row numbers
                rows = raw.column("__row").to_numpy()
                raw = raw.drop_columns(["__row"])
            clean, rejects = validate_event_batch(raw, columns, known, inp.uri, shard, rows)
            if error_mode:
                raise_first(rejects)
            if rejects.num_rows:
                storage.write_table(
                    storage.join(rejects_dir, f"s{shard:06d}-b{b:06d}.parquet"), rejects
                )
            if max_key is not None:
                clean = clean.filter(pc.less_equal(clean.column("ukey"), pa.scalar(max_key)))
            yield clean.append_column("bucket", _buckets(clean.column("ukey"), boundaries))


def _buckets(ukeys: pa.ChunkedArray | pa.Array, boundaries: list[bytes]) -> pa.Array:
    """Bucket of each key: the number of boundaries <= it (boundaries sorted)."""
    if not boundaries:
        return pa.array(np.zeros(len(ukeys), dtype=np.int32))
    import bisect

    return by_distinct(
        ukeys.combine_chunks() if isinstance(ukeys, pa.ChunkedArray) else ukeys,
        lambda k: bisect.bisect_right(boundaries, k) if k is not None else 0,
        pa.int32(),
    )


def _top_keys(batch: pa.Table, n: int) -> pa.Table:
    """The ``n`` smallest distinct user keys of a batch (a distributed top-N of users)."""
    keys = pc.unique(batch.column("ukey"))
    keys = keys.take(pc.sort_indices(keys)).slice(0, n)
    return pa.table({"ukey": keys})


@dataclass(frozen=True)
class BucketJob:
    """What every bucket needs: where to write, the item order, the split settings."""

    outputs: dict[str, str]  # name → file URI (one bucket) or folder URI (parts)
    single: bool
    item_order: pa.Array  # item_id of item_idx 0..n-1
    max_key: bytes | None  # max_users: the last kept user's key (later users only dedup)
    max_history: int
    min_user_events: int
    want_users: bool


SUMMARY = pa.schema(
    [
        ("bucket", pa.int32()),
        ("lengths", pa.list_(pa.int64())),  # bincount of events per user
        ("excluded", pa.int64()),
        ("rating_sum", pa.float64()),
        ("rating_count", pa.int64()),
        ("ts_big", pa.int64()),  # events with timestamp > 1e11 (milliseconds?)
        ("train_rows", pa.int64()),
        ("train_targets", pa.int64()),
        ("valid_rows", pa.int64()),
        ("test_rows", pa.int64()),
        ("dup_file", pa.list_(pa.int32())),
        ("dup_row", pa.list_(pa.int64())),
        ("users", pa.list_(pa.string())),
        ("node", pa.string()),  # the Ray node that processed the bucket
    ]
)


def _process_bucket(group: pa.Table, job: BucketJob) -> pa.Table:
    """One bucket: duplicates out, per-user order, split, write the parts; return its figures."""
    bucket = int(group.column("bucket")[0].as_py())
    ordered = sequences.order_events(group.drop_columns(["bucket"]))
    ev, starts = ordered.events, ordered.starts
    if job.max_key is not None:  # max_users: keep the users up to the last kept one
        kept = int(pc.sum(pc.less_equal(ev.column("ukey"), pa.scalar(job.max_key))).as_py() or 0)
        ev, starts = ev.slice(0, kept), starts[starts <= kept]
    found = pc.index_in(ev.column("item_id"), value_set=job.item_order)
    if found.null_count:  # validation checked every item against the catalogue
        raise AssertionError("an event's item is not in the item table")
    item_idx = found.to_numpy(zero_copy_only=False).astype(np.int32)
    stamps = ev.column("timestamp").to_numpy()
    rating = ev.column("rating")
    interactions = pa.table(
        [
            ev.column("user_id"),
            pa.array(item_idx, pa.int32()),
            ev.column("timestamp"),
            pc.cast(rating, pa.float32()),
            pc.cast(ev.column("value"), pa.float32()),
        ],
        schema=schema.INTERACTIONS,
    )
    lengths = np.diff(starts)
    user_ids = ev.column("user_id").combine_chunks().take(pa.array(starts[:-1]))
    eligible = lengths >= job.min_user_events
    rows = np.repeat(eligible, lengths)
    kept_starts = np.zeros(int(eligible.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[eligible], out=kept_starts[1:])
    parts = sequences.leave_one_out(
        user_ids.filter(pa.array(eligible)), item_idx[rows], stamps[rows], kept_starts,
        job.max_history,
    )  # fmt: skip
    tables = {
        "interactions": interactions,
        "train": parts.train,
        "valid": parts.valid,
        "test": parts.test,
    }
    for name, table in tables.items():
        uri = job.outputs[name]
        storage.write_table(
            uri if job.single else storage.join(uri, f"part-{bucket:05d}.parquet"), table
        )
    targets = 0
    if parts.train.num_rows:
        sizes = pc.list_value_length(parts.train.column("items"))
        targets = int(pc.sum(pc.subtract(sizes, parts.train.column("loss_from"))).as_py())
    rated = rating.drop_null()
    dups = ordered.duplicates
    return pa.Table.from_pylist(
        [
            {
                "bucket": bucket,
                "lengths": np.bincount(lengths).tolist(),
                "excluded": int((~eligible).sum()),
                "rating_sum": float(pc.sum(rated).as_py() or 0.0),
                "rating_count": len(rated),
                "ts_big": int((stamps > 10**11).sum()),
                "train_rows": parts.train.num_rows,
                "train_targets": targets,
                "valid_rows": parts.valid.num_rows,
                "test_rows": parts.test.num_rows,
                "dup_file": dups.column("file").to_pylist(),
                "dup_row": dups.column("row").to_pylist(),
                "users": user_ids.to_pylist() if job.want_users else [],
                "node": _node_id(),
            }
        ],
        schema=SUMMARY,
    )


def _duplicate_rejects(inp: EventInput, rows: list[int]) -> pa.Table:
    """REJECTS rows (reason duplicate_event) for ``rows`` of a shard, with their raw records."""
    wanted = np.asarray(sorted(rows), dtype=np.int64)
    parts = []
    for raw, offset in read_batches(inp):
        n = raw.num_rows
        if "__row" in raw.column_names:
            raw = raw.drop_columns(["__row"])
        here = wanted[(wanted >= offset) & (wanted < offset + n)]
        if len(here):
            parts.append(
                reject_rows(raw, here - offset, inp.uri, here, [DUPLICATE_EVENT] * len(here))
            )
    return pa.concat_tables(parts) if parts else schema.REJECTS.empty_table()


# --------------------------------------------------------------------------------------------
# The driver's recipe


@dataclass
class EventLogResult:
    """What the driver keeps: figures, the user list (only when a users table is wanted)."""

    n_users: int
    n_events: int
    length_hist: np.ndarray
    users_excluded: int
    rating_sum: float
    rating_count: int
    ts_big: int
    train_rows: int
    train_targets: int
    valid_rows: int
    test_rows: int
    buckets: int
    kept_users: list[str] | None
    seconds: dict[str, float]
    nodes: dict[str, list[str]]  # step → the Ray nodes its tasks ran on


def _unwrap(err: BaseException) -> BaseException:
    """The user's error (a DataError from a shard) out of Ray's task-error wrappers."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, DataError):
            return DataError(str(seen).split("\n")[-1] if "\n" in str(seen) else str(seen))
        seen = seen.__cause__ or getattr(seen, "cause", None)
    return err


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DataError:
        raise
    except Exception as err:  # re-raised, unwrapped when it is the user's
        cause = _unwrap(err)
        if cause is err:
            raise
        raise cause from None


def run_event_log(
    cfg: DataSection,
    inputs: list[EventInput],
    columns: dict[str, str],
    known_items: pa.Array,
    outputs: dict[str, str],
    work_uri: str,
    items_for: Callable[[set[str] | None], pa.Array],
    want_users: bool,
    rows_per_bucket: int | None = None,
) -> tuple[EventLogResult, Iterator[pa.Table]]:
    """Run steps 1-3 of the module recipe; return the figures and an iterator of the event
    rejects (per shard, in file order) for the driver to write.

    ``items_for(kept_item_ids or None)`` builds and writes the item table (in the caller) and
    returns the item ids in item_idx order; it is called once the kept items are known.
    """
    import ray

    seconds: dict[str, float] = {}
    error_mode = cfg.on_bad_rows == "error"
    shards = ray.data.from_items(
        [{"shard": i} for i in range(len(inputs))], override_num_blocks=len(inputs)
    )
    # A dataset keeps the DataContext it was made with: set the shuffle batch on this one only.
    shards.context.shuffle_input_batch_bytes = min(
        shards.context.shuffle_input_batch_bytes, SHUFFLE_INPUT_BATCH_BYTES
    )
    user_col = columns["user_id"]

    # 1. Sample user keys → bucket boundaries.
    t0 = time.time()
    sample = _run(
        lambda: shards.map_batches(
            _sample_keys, batch_size=1, fn_kwargs={"inputs": inputs, "user_col": user_col}
        ).to_arrow_refs()
    )
    sample_table = pa.concat_tables(ray.get(sample))
    total_rows = int(pc.sum(sample_table.column("rows")).as_py() or 0)
    keys = sample_table.column("ukey").drop_null().combine_chunks()
    keys = keys.take(pc.sort_indices(keys))
    seconds["sample"] = time.time() - t0

    validate_kwargs = {
        "inputs": inputs,
        "columns": columns,
        "known": known_items,
        "boundaries": [],
        "max_key": None,
        "rejects_dir": storage.join(work_uri, "rejects"),
        "error_mode": error_mode,
    }

    def validated(**overrides: Any) -> Any:
        return shards.map_batches(
            _validate_shards, batch_size=1,
            fn_kwargs={**validate_kwargs, **overrides},
        )  # fmt: skip

    # max_users: the first N users by natural id order among the *validated* events.
    keep_items: set[str] | None = None
    max_key: bytes | None = None
    if cfg.max_users is not None:
        t0 = time.time()
        n = cfg.max_users
        tops = _run(
            lambda: (
                validated()
                .map_batches(_top_keys, batch_format="pyarrow", batch_size=None, fn_kwargs={"n": n})
                .to_arrow_refs()
            )
        )
        top = pa.concat_tables(ray.get(tops)).column("ukey")
        top = pc.unique(top)
        top = top.take(pc.sort_indices(top)).slice(0, n)
        max_key = top[-1].as_py() if len(top) else b""
        keep_items = set(
            _run(lambda: validated(max_key=max_key).select_columns(["item_id"]).unique("item_id"))
        )
        seconds["max_users"] = time.time() - t0
        # Every user still goes through the shuffle: a duplicate is counted for every user (as
        # the in-memory stage does) before the buckets drop the users after the first N.

    n_buckets = max(1, math.ceil(total_rows / (rows_per_bucket or ROWS_PER_BUCKET)))
    n_buckets = min(n_buckets, max(1, len(keys)))
    boundaries = [keys[int(len(keys) * k / n_buckets)].as_py() for k in range(1, n_buckets)]
    boundaries = sorted(set(boundaries))
    n_buckets = len(boundaries) + 1
    validate_kwargs["boundaries"] = boundaries

    item_order = items_for(keep_items)
    job = BucketJob(
        outputs=outputs,
        single=n_buckets == 1,
        item_order=item_order,
        max_key=max_key,
        max_history=cfg.max_history,
        min_user_events=cfg.min_user_events,
        want_users=want_users,
    )
    for uri in outputs.values():  # a folder of parts starts empty
        if not job.single:
            storage.makedirs(uri)

    # 2 + 3. Validate, shuffle by bucket, per-user work per bucket.
    t0 = time.time()
    summaries = _run(
        lambda: (
            validated()
            .groupby("bucket", num_partitions=n_buckets)
            .map_groups(_process_bucket, batch_format="pyarrow", fn_kwargs={"job": job})
            .to_arrow_refs()
        )
    )
    summary = pa.concat_tables([t for t in ray.get(summaries)] or [SUMMARY.empty_table()])
    summary = summary.take(pc.sort_indices(summary, [("bucket", "ascending")]))
    seconds["validate_shuffle_split"] = time.time() - t0
    if summary.num_rows == 0:  # no event survived: still write every output, empty
        for name, uri in outputs.items():
            target = uri if job.single else storage.join(uri, "part-00000.parquet")
            storage.write_table(target, OUTPUT_SCHEMAS[name].empty_table())

    hist = np.zeros(1, dtype=np.int64)
    for lengths in summary.column("lengths").to_pylist():
        h = np.asarray(lengths, dtype=np.int64)
        if len(h) > len(hist):
            hist = np.pad(hist, (0, len(h) - len(hist)))
        hist[: len(h)] += h
    col = {
        name: summary.column(name).to_pylist() for name in summary.column_names if name != "lengths"
    }
    users: list[str] | None = None
    if want_users:
        users = [u for us in col["users"] for u in us]
    dup_by_shard: dict[int, list[int]] = {}
    for files, rws in zip(col["dup_file"], col["dup_row"], strict=True):
        for f, r in zip(files, rws, strict=True):
            dup_by_shard.setdefault(f, []).append(r)
    if error_mode and dup_by_shard:
        first_shard = min(dup_by_shard)
        raise_first(_duplicate_rejects(inputs[first_shard], [min(dup_by_shard[first_shard])]))

    result = EventLogResult(
        n_users=int(hist.sum()),
        n_events=int((hist * np.arange(len(hist))).sum()),
        length_hist=hist,
        users_excluded=int(sum(col["excluded"])),
        rating_sum=float(sum(col["rating_sum"])),
        rating_count=int(sum(col["rating_count"])),
        ts_big=int(sum(col["ts_big"])),
        train_rows=int(sum(col["train_rows"])),
        train_targets=int(sum(col["train_targets"])),
        valid_rows=int(sum(col["valid_rows"])),
        test_rows=int(sum(col["test_rows"])),
        buckets=n_buckets,
        kept_users=users,
        seconds=seconds,
        nodes={
            "read": sorted(set(sample_table.column("node").to_pylist())),
            "buckets": sorted(set(col["node"])),
        },
    )
    return result, _event_rejects(inputs, storage.join(work_uri, "rejects"), dup_by_shard)


def _event_rejects(
    inputs: list[EventInput], rejects_dir: str, dups: dict[int, list[int]]
) -> Iterator[pa.Table]:
    """Per shard, in shard order: its validation rejects and duplicates, sorted by row."""
    import ray

    names = storage.listdir(rejects_dir)
    dup_refs = {
        s: ray.remote(_duplicate_rejects).remote(inputs[s], rows) for s, rows in dups.items()
    }
    for s in range(len(inputs)):
        parts = [
            storage.read_table(storage.join(rejects_dir, n))
            for n in names
            if n.startswith(f"s{s:06d}-")
        ]
        if s in dup_refs:
            parts.append(ray.get(dup_refs[s]))
        if parts:
            table = pa.concat_tables(parts)
            yield table.take(pc.sort_indices(table, [("row", "ascending")]))


def loaded_input(src: Source) -> tuple[EventInput, dict[str, str]]:
    """A source its loader has already read (ML-100k): one in-memory shard with row numbers."""
    table = src.table.append_column("__row", pa.array(np.arange(src.table.num_rows), pa.int64()))
    return EventInput(src.uri, "table", table=table), dict(src.columns)
