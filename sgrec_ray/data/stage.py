"""The ``data`` stage: load → validate → slice → index → split → write, then print the statistics.

Outputs (in ``<run>/data/``, any URI): ``items``, ``users`` (when the source has user features),
``interactions``, ``rejects`` (always written, possibly empty), ``train`` / ``valid`` / ``test`` and
``stats.json``; minionerec data with an SID index also gets ``sid_codes.parquet`` for
``sid.method=precomputed``. Schemas: :mod:`sgrec_ray.data.schema`.

Choices worth knowing:

- ``data.max_users`` keeps the first N users in numeric-aware id order ("2" before "10") — a
  deterministic slice of the *input* taken after validation and before ``min_user_events``. With it,
  the catalogue is cut to the items that appear in any event of the kept users (so a 80-user test
  slice has a catalogue those users can actually reach, and every valid/test target is in it).
  Without it, the full catalogue is kept, never-seen items included.
- ``item_idx`` is dense 0..n-1 in numeric-aware ``item_id`` order (ML-100k: item_idx = id - 1).
- Users with fewer than ``data.min_user_events`` validated events stay in ``interactions`` and count
  in the stats but are left out of the splits (``users_excluded_few_events``).
- Items without usable text are kept; their text falls back to the title, then the item id
  (``items_missing_text``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sgrec_ray import storage
from sgrec_ray.config import ConfigError, DataSection
from sgrec_ray.data import schema, split
from sgrec_ray.data.loaders import (
    Loaded,
    compose_text,
    load_generic,
    load_generic_catalogue,
    load_movielens,
    natural_key,
    text_fields,
)
from sgrec_ray.data.minionerec import MiniOneRecData, load_minionerec, sid_codes_table
from sgrec_ray.data.stats import compute_stats, format_stats, stats_from_counts
from sgrec_ray.data.validate import (
    Events,
    Rejects,
    Source,
    require_columns,
    validate_events,
    validate_items,
    validate_users,
)
from sgrec_ray.ray_utils import ensure_ray
from sgrec_ray.runs import RunContext, StageResult

log = logging.getLogger(__name__)


@dataclass
class DataTables:
    """Everything the stage writes, before writing (also handy for tests and notebooks)."""

    items: pa.Table
    interactions: pa.Table
    train: pa.Table
    valid: pa.Table
    test: pa.Table
    rejects: pa.Table
    stats: dict[str, Any]
    users: pa.Table | None = None
    sid_codes: pa.Table | None = None
    notes: list[str] = field(default_factory=list)


def run(ctx: RunContext) -> StageResult:
    """Build the canonical tables for ``ctx.cfg.data``, write them to ``ctx.stage_uri("data")``."""
    if uses_ray(ctx.cfg.data):
        ensure_ray(ctx.cfg)
        return run_distributed(ctx)
    tables = build(ctx.cfg.data)
    outputs = {
        "items": (schema.ITEMS_FILE, tables.items),
        "users": (schema.USERS_FILE, tables.users),
        "interactions": (schema.INTERACTIONS_FILE, tables.interactions),
        "rejects": (schema.REJECTS_FILE, tables.rejects),
        "train": (schema.TRAIN_FILE, tables.train),
        "valid": (schema.VALID_FILE, tables.valid),
        "test": (schema.TEST_FILE, tables.test),
        "sid_codes": (schema.SID_CODES_FILE, tables.sid_codes),
    }
    written: dict[str, str] = {}
    for name, (file, table) in outputs.items():
        uri = ctx.path("data", file)
        if table is None:
            _delete(uri)  # a stale file from an earlier config must not be read as current
            continue
        storage.write_table(uri, table)
        written[name] = uri
    written["stats"] = ctx.path("data", schema.STATS_FILE)
    storage.write_json(written["stats"], tables.stats)
    text = format_stats(tables.stats, title=f"data: {ctx.cfg.run.name} ({ctx.cfg.data.source})")
    log.info("\n%s", text)
    print(text, flush=True)
    return StageResult(outputs=written, metrics=tables.stats)


def build(cfg: DataSection) -> DataTables:
    """Load, validate and split per ``cfg`` (no writing)."""
    _check_limits(cfg)
    rejects = Rejects(cfg.on_bad_rows)
    if cfg.source == "minionerec":
        return _build_minionerec(cfg, load_minionerec(cfg, rejects), rejects)
    loaded = load_movielens(cfg) if cfg.source == "movielens" else load_generic(cfg)
    return _build_event_log(cfg, loaded, rejects)


# --------------------------------------------------------------------------------------------
# Shared helpers

AUTO_RAY_BYTES = 8 * 2**20  # engine=auto: logs this big go through Ray Data


def _log_bytes(cfg: DataSection) -> int:
    """Size of the event log on storage (a file, or a folder's files); 0 if it cannot be seen."""
    if cfg.source == "movielens":
        return 0  # ML-100k: 2 MB, parsed by its loader
    if not cfg.path or not storage.exists(cfg.path):
        return 0
    fs, path = storage.filesystem(cfg.path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return int(info.size or 0)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)


def uses_ray(cfg: DataSection) -> bool:
    """Whether the data stage runs on Ray Data (``data.engine``; auto: big generic logs)."""
    supported = cfg.source in ("movielens", "generic") and cfg.split == "leave_one_out"
    if cfg.engine == "memory":
        return False
    if cfg.engine == "ray":
        if not supported:
            raise ConfigError(
                "data.engine: ray runs split=leave_one_out on movielens or generic sources; "
                f"got source={cfg.source!r}, split={cfg.split!r}: use engine auto or memory"
            )
        return True
    return supported and _log_bytes(cfg) >= AUTO_RAY_BYTES


def _check_limits(cfg: DataSection) -> None:
    """The window and slice sizes both engines need before reading anything."""
    if cfg.max_history < 1:
        raise ConfigError(f"data.max_history: must be >= 1, got {cfg.max_history}")
    if cfg.max_users is not None and cfg.max_users < 1:
        raise ConfigError(f"data.max_users: must be >= 1 or null, got {cfg.max_users}")


def _delete(uri: str) -> None:
    if storage.exists(uri):
        fs, path = storage.filesystem(uri)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            fs.delete_file(path)
        elif kind == pafs.FileType.Directory:
            fs.delete_dir(path)


def _items_table(
    catalogue: pa.Table, keep_ids: set[str] | None, configured: list[str] | None, uri: str
) -> tuple[pa.Table, dict[str, int], int]:
    """ITEMS rows (+ the catalogue's other columns) with dense item_idx in natural id order.

    Returns the table, item_id → item_idx, and how many items had no text (fallback used).
    """
    fields = text_fields(configured, catalogue.column_names, uri)
    require_columns(
        catalogue.column_names,
        fields,
        uri,
        hint="data.item_text_fields names item columns that this source does not have; "
        f"available: {catalogue.column_names}",
    )
    rows = catalogue.to_pylist()
    if keep_ids is not None:
        rows = [r for r in rows if r["item_id"] in keep_ids]
    rows.sort(key=lambda r: natural_key(r["item_id"]))
    extra = [c for c in catalogue.column_names if c not in ("item_id", "title")]
    out: dict[str, list] = {"item_idx": [], "item_id": [], "title": [], "text": []}
    out.update({c: [] for c in extra if c != "text"})
    missing = 0
    for idx, row in enumerate(rows):
        title = row.get("title")
        text = compose_text(row, fields)
        if not text:
            missing += 1
            text = title or row["item_id"]
        out["item_idx"].append(idx)
        out["item_id"].append(row["item_id"])
        out["title"].append(title or row["item_id"])
        out["text"].append(text)
        for c in extra:
            if c != "text":
                out[c].append(row.get(c))
    columns = [*schema.ITEMS, *(pa.field(c, pa.string()) for c in extra if c != "text")]
    table = pa.Table.from_pydict(out, schema=pa.schema(columns))
    index = {item_id: i for i, item_id in enumerate(out["item_id"])}
    return table, index, missing


def _kept_users(user_ids: list[str], max_users: int | None) -> list[str]:
    users = sorted(set(user_ids), key=natural_key)
    return users if max_users is None else users[:max_users]


# --------------------------------------------------------------------------------------------
# Event logs (movielens, generic)


def _build_event_log(cfg: DataSection, loaded: Loaded, rejects: Rejects) -> DataTables:
    catalogue = validate_items(loaded.items, rejects)
    known = set(catalogue.column("item_id").to_pylist())
    events = validate_events(loaded.events, known, rejects)

    kept = _kept_users(events.user_id, cfg.max_users)
    if cfg.max_users is not None:
        keep_set = set(kept)
        events = events.take([i for i, u in enumerate(events.user_id) if u in keep_set])
    keep_items = set(events.item_id) if cfg.max_users is not None else None
    items, index, missing_text = _items_table(
        catalogue, keep_items, cfg.item_text_fields, loaded.items.uri
    )

    interactions, sequences = _sequences(events, kept, index)
    eligible = [s for s in sequences if len(s.items) >= cfg.min_user_events]
    if cfg.split == "leave_one_out":
        parts = split.leave_one_out(eligible, cfg.max_history)
        protocol = "leave_one_out (stable time sort, ties keep file order)"
    else:
        parts = split.temporal(eligible, cfg.max_history, cfg.split_ratios)
        protocol = f"temporal {cfg.split_ratios} on target time (stable)"
    train, valid, test = parts.tables()

    users = None
    extra: dict[str, Any] = {"protocol": protocol}
    if events.timestamp and sorted(events.timestamp)[len(events) // 2] > 10**11:
        note = "timestamps look like milliseconds (median > 1e11); data expects epoch seconds"
        log.warning(note)
        extra["notes"] = [note]
    if loaded.users is not None:
        users, n_unused, n_without = _users_table(loaded.users, kept, rejects)
        extra["users_file_rows_without_events"] = n_unused
        extra["users_without_features"] = n_without
    stats = compute_stats(
        user_lengths=[len(s.items) for s in sequences],
        n_items=items.num_rows,
        ratings=events.rating,
        rejects=rejects.counts,
        users_excluded=len(sequences) - len(eligible),
        min_user_events=cfg.min_user_events,
        train=train,
        valid=valid,
        test=test,
        items_missing_text=missing_text,
        extra=extra,
    )
    return DataTables(items, interactions, train, valid, test, rejects.table(), stats, users)


def _sequences(
    events: Events, users: list[str], index: dict[str, int]
) -> tuple[pa.Table, list[split.UserSequence]]:
    """INTERACTIONS (user order, then time; ties keep file order) and per-user sequences."""
    rank = {u: i for i, u in enumerate(users)}
    order = split.user_event_order([rank[u] for u in events.user_id], events.timestamp)
    cols: dict[str, list] = {
        "user_id": [],
        "item_idx": [],
        "timestamp": [],
        "rating": [],
        "value": [],
    }
    seqs: dict[str, split.UserSequence] = {}
    for i in order:
        user, item, ts = events.user_id[i], index[events.item_id[i]], events.timestamp[i]
        cols["user_id"].append(user)
        cols["item_idx"].append(item)
        cols["timestamp"].append(ts)
        cols["rating"].append(events.rating[i])
        cols["value"].append(events.value[i])
        seq = seqs.get(user)
        if seq is None:
            seq = seqs[user] = split.UserSequence(user, [], [])
        seq.items.append(item)
        seq.timestamps.append(ts)
    table = pa.Table.from_pydict(cols, schema=schema.INTERACTIONS)
    return table, [seqs[u] for u in users if u in seqs]


def _users_table(src: Source, kept: list[str], rejects: Rejects) -> tuple[pa.Table, int, int]:
    """User features of the kept users, in user order; counts of unused and missing feature rows."""
    table = validate_users(src, rejects)
    ids = table.column("user_id").to_pylist()
    pos = {u: i for i, u in enumerate(ids)}
    take = [pos[u] for u in kept if u in pos]
    kept_set = set(kept)
    unused = sum(1 for u in ids if u not in kept_set)
    return table.take(pa.array(take, pa.int64())), unused, len(kept) - len(take)


# --------------------------------------------------------------------------------------------
# Event logs on Ray Data (sgrec_ray.data.distributed)


def run_distributed(ctx: RunContext) -> StageResult:
    """The event-log stage on Ray Data: same outputs as :func:`build` + writing, without the log
    in the driver. Event-sized outputs are part folders when the log needs more than one bucket."""
    return build_distributed(ctx)[0]


def build_distributed(ctx: RunContext) -> tuple[StageResult, Any]:
    """:func:`run_distributed`, also returning the run's figures (buckets, seconds per step, the
    Ray nodes each step ran on: a ``distributed.EventLogResult``)."""
    from sgrec_ray.data import distributed as dist

    cfg = ctx.cfg.data
    _check_limits(cfg)
    rejects = Rejects(cfg.on_bad_rows)
    if cfg.source == "movielens":
        loaded = load_movielens(cfg)
        items_src, users_src = loaded.items, loaded.users
        first, columns = dist.loaded_input(loaded.events)
        inputs = [first]
    else:
        parts = load_generic_catalogue(cfg)
        items_src, users_src, columns = parts.items, parts.users, parts.mapping
        inputs = dist.event_inputs(parts.log_uri, parts.string_columns)
    catalogue = validate_items(items_src, rejects)
    n_item_rejects = len(rejects.rows)
    built: dict[str, Any] = {}

    def items_for(keep: set[str] | None) -> pa.Array:
        items, _, missing = _items_table(catalogue, keep, cfg.item_text_fields, items_src.uri)
        built.update(items=items, missing=missing)
        return items.column("item_id").combine_chunks()

    outputs = {name: ctx.path("data", file) for name, file in dist.EVENT_OUTPUTS.items()}
    work = ctx.path("data", dist.WORK_DIR)
    result, event_rejects = dist.run_event_log(
        cfg,
        inputs,
        columns,
        catalogue.column("item_id").combine_chunks(),
        outputs,
        work,
        items_for,
        want_users=users_src is not None,
    )
    items: pa.Table = built["items"]
    extra: dict[str, Any] = {"protocol": "leave_one_out (stable time sort, ties keep file order)"}
    if result.n_events and result.ts_big >= result.n_events - result.n_events // 2:
        note = "timestamps look like milliseconds (median > 1e11); data expects epoch seconds"
        log.warning(note)
        extra["notes"] = [note]
    users = None
    if users_src is not None:
        users, n_unused, n_without = _users_table(users_src, result.kept_users or [], rejects)
        extra["users_file_rows_without_events"] = n_unused
        extra["users_without_features"] = n_without

    # rejects.parquet: item rejects, event rejects (shard by shard, in file order), user rejects.
    rejects_uri = ctx.path("data", schema.REJECTS_FILE)
    fs, path = storage.filesystem(rejects_uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    counts = rejects.counts.copy()
    with pq.ParquetWriter(path, schema.REJECTS, filesystem=fs) as writer:
        writer.write_table(
            pa.Table.from_pylist(rejects.rows[:n_item_rejects], schema=schema.REJECTS)
        )
        for table in event_rejects:
            counts.update(table.column("reason").to_pylist())
            writer.write_table(table)
        writer.write_table(
            pa.Table.from_pylist(rejects.rows[n_item_rejects:], schema=schema.REJECTS)
        )
    _delete(work)

    written = {"items": ctx.path("data", schema.ITEMS_FILE)}
    storage.write_table(written["items"], items)
    if users is not None:
        written["users"] = ctx.path("data", schema.USERS_FILE)
        storage.write_table(written["users"], users)
    written.update(outputs)
    written["rejects"] = rejects_uri
    _delete(ctx.path("data", schema.SID_CODES_FILE))
    stats = stats_from_counts(
        length_hist=result.length_hist,
        n_items=items.num_rows,
        rating_mean=result.rating_sum / result.rating_count if result.rating_count else None,
        rejects=counts,
        users_excluded=result.users_excluded,
        min_user_events=cfg.min_user_events,
        train_rows=result.train_rows,
        train_targets=result.train_targets,
        valid_rows=result.valid_rows,
        test_rows=result.test_rows,
        items_missing_text=built["missing"],
        extra=extra,
    )
    written["stats"] = ctx.path("data", schema.STATS_FILE)
    storage.write_json(written["stats"], stats)
    log.info(
        "data on Ray Data: %d buckets, seconds %s, nodes %s",
        result.buckets, result.seconds, result.nodes,
    )  # fmt: skip
    text = format_stats(stats, title=f"data: {ctx.cfg.run.name} ({cfg.source})")
    log.info("\n%s", text)
    print(text, flush=True)
    return StageResult(outputs=written, metrics=stats), result


# --------------------------------------------------------------------------------------------
# MiniOneRec (sample-based)


def _build_minionerec(cfg: DataSection, data: MiniOneRecData, rejects: Rejects) -> DataTables:
    all_users = [r.user_id for rows in data.rows.values() for r in rows]
    kept = _kept_users(all_users, cfg.max_users)
    keep_set = set(kept)
    rows = {s: [r for r in rs if r.user_id in keep_set] for s, rs in data.rows.items()}
    keep_items = None
    if cfg.max_users is not None:
        keep_items = {i for rs in rows.values() for r in rs for i in (*r.history, r.target)}
    items, index, missing_text = _items_table(
        data.items, keep_items, cfg.item_text_fields, data.items_uri
    )

    # Reconstruct each user's event sequence from the rows (file order): the first row of a user
    # contributes its history and target, every later row its target. ``seen`` of a sample is the
    # user's reconstructed events before its target.
    events: dict[str, list[tuple[int, int]]] = defaultdict(list)
    samples: dict[str, list[dict]] = {"valid": [], "test": []}
    ordered = sorted(((s, r) for s, rs in rows.items() for r in rs), key=lambda x: x[1].ordinal)
    for name, row in ordered:
        user_events = events[row.user_id]
        if not user_events:
            user_events.extend((index[h], row.ordinal) for h in row.history)
        if name in samples:
            samples[name].append(
                {
                    "user_id": row.user_id,
                    "history": [index[h] for h in row.history][-cfg.max_history :],
                    "target": index[row.target],
                    "timestamp": row.ordinal,
                    "seen": [i for i, _ in user_events],
                }
            )
        user_events.append((index[row.target], row.ordinal))
    train_rows = []
    for row in rows.get(data.train_from, []):
        history = [index[h] for h in row.history][-cfg.max_history :]
        train_rows.append(
            {
                "user_id": row.user_id,
                "items": [*history, index[row.target]],
                "loss_from": len(history),
            }
        )

    cols: dict[str, list] = {
        "user_id": [],
        "item_idx": [],
        "timestamp": [],
        "rating": [],
        "value": [],
    }
    for user in sorted(events, key=natural_key):
        for item, ts in events[user]:
            cols["user_id"].append(user)
            cols["item_idx"].append(item)
            cols["timestamp"].append(ts)
            cols["rating"].append(None)
            cols["value"].append(None)
    interactions = pa.Table.from_pydict(cols, schema=schema.INTERACTIONS)
    train = pa.Table.from_pylist(train_rows, schema=schema.SEQUENCES)
    valid = pa.Table.from_pylist(samples["valid"], schema=schema.SAMPLES)
    test = pa.Table.from_pylist(samples["test"], schema=schema.SAMPLES)

    extra: dict[str, Any] = {
        "protocol": "minionerec given splits (sample rows; timestamps = row order)",
        "train_from": data.train_from,
    }
    sid_codes = None
    if data.sid_tokens is not None:
        sid_codes, without = sid_codes_table(data.sid_tokens, index, data.sid_uri or "", rejects)
        extra["items_without_sid"] = without
    if data.notes:
        extra["notes"] = list(data.notes)
    stats = compute_stats(
        user_lengths=[len(v) for v in events.values()],
        n_items=items.num_rows,
        ratings=[],
        rejects=rejects.counts,
        users_excluded=0,
        min_user_events=cfg.min_user_events,
        train=train,
        valid=valid,
        test=test,
        items_missing_text=missing_text,
        extra=extra,
    )
    stats["min_user_events"] = None  # not applied: the rows are already samples
    return DataTables(
        items, interactions, train, valid, test, rejects.table(), stats, sid_codes=sid_codes,
        notes=data.notes,
    )  # fmt: skip
