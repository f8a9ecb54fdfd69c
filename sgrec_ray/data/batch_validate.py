"""Validation of event rows over whole Arrow batches, with the same rules as :mod:`.validate`.

Why a second module: :func:`sgrec_ray.data.validate.validate_events` walks rows in a Python loop,
which is what makes the in-memory data stage slow at 10^7 events. Here every check is a column
operation. Values are still parsed by *the same* functions (``parse_id``, ``parse_timestamp``,
``parse_number``), but once per distinct value of a column (dictionary encoding) rather than once
per row, and typed columns take exact fast paths (an int64 timestamp is its own value; a float
rating is NaN → missing, ±inf → bad). A row gets the first reason that applies, in the order
``validate_events`` checks them; rejected rows keep their source, 0-based row and raw record.

Duplicates are *not* checked here: two copies of an event may sit in different shards, so that
check runs after the rows of each user have been brought together (:mod:`.sequences`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray.data import schema
from sgrec_ray.data.validate import (
    BAD_RATING,
    BAD_TIMESTAMP,
    BAD_VALUE,
    MISSING_ITEM_ID,
    MISSING_USER_ID,
    UNKNOWN_ITEM,
    Rejects,
    parse_id,
    parse_number,
    parse_timestamp,
)

# The order validate_events checks a row in; a row is rejected for the first that applies.
EVENT_REASONS = (
    MISSING_USER_ID,
    MISSING_ITEM_ID,
    BAD_TIMESTAMP,
    BAD_RATING,
    BAD_VALUE,
    UNKNOWN_ITEM,
)

# Clean event rows between validation and the per-user step (``ukey``: natural_sort_key bytes).
CLEAN = pa.schema(
    [
        ("user_id", pa.string()),
        ("ukey", pa.binary()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
        ("value", pa.float64()),
        ("file", pa.int32()),
        ("row", pa.int64()),
    ]
)

_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(value: str) -> bytes:
    """Bytes that sort like :func:`sgrec_ray.data.loaders.natural_key` (digit runs by value, the
    raw string breaking ties), so a distributed sort on a plain binary column gives the same user
    order as the in-memory stage.

    Text runs end in ``\\x01``, numbers are their length (8 hex digits) then their digits, the
    tuple ends in ``\\x00`` and the raw string follows. Ids holding U+0000 or U+0001 may sort
    differently from ``natural_key`` (no real id does).
    """
    out = bytearray()
    for i, part in enumerate(_DIGITS.split(value)):
        if i % 2:
            digits = str(int(part))
            out += f"{len(digits):08x}{digits}".encode()
        else:
            out += part.encode() + b"\x01"
    return bytes(out) + b"\x00" + value.encode()


def _combine(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def by_distinct(arr: pa.Array, fn: Callable[[Any], Any], out_type: pa.DataType) -> pa.Array:
    """``fn`` applied to every value of ``arr``, called once per distinct value (nulls → fn(None))."""
    try:
        enc = pc.dictionary_encode(arr)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array([fn(v) for v in arr.to_pylist()], out_type)
    values = pa.array([fn(v) for v in enc.dictionary.to_pylist()], out_type)
    out = values.take(enc.indices)
    if arr.null_count:
        out = pc.if_else(arr.is_null(), pa.scalar(fn(None), out_type), out)
    return out


def parse_ids(arr: pa.Array) -> pa.Array:
    """Ids as non-empty strings (null = missing), exactly as ``parse_id`` reads each value."""
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.string())
    return by_distinct(arr, parse_id, pa.string())


def parse_timestamps(arr: pa.Array) -> pa.Array:
    """Epoch seconds as int64, null where ``parse_timestamp`` finds none."""
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.int64())
    if pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(values)
        trunc = np.trunc(np.where(ok, values, 0.0)).astype(np.int64)
        return pa.array(trunc, pa.int64(), mask=~ok)
    return by_distinct(arr, parse_timestamp, pa.int64())


def parse_numbers(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(float64 values, null = missing; bool mask of values present but not a finite number)."""
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls → NaN
        bad = np.isinf(values)
        return pa.array(values, pa.float64(), mask=~np.isfinite(values)), bad

    def parse(v: Any) -> tuple[float | None, bool]:
        number = parse_number(v)
        return (
            (None, True) if not (number is None or isinstance(number, float)) else (number, False)
        )

    pairs = by_distinct(
        arr,
        lambda v: dict(zip(("v", "bad"), parse(v), strict=True)),
        pa.struct([("v", pa.float64()), ("bad", pa.bool_())]),
    )
    return pairs.field("v"), pairs.field("bad").to_numpy(zero_copy_only=False)


def _column(table: pa.Table, columns: dict[str, str], name: str) -> pa.Array:
    src = columns.get(name)
    if src is None or src not in table.column_names:
        return pa.nulls(table.num_rows)
    return _combine(table.column(src))


def validate_event_batch(
    table: pa.Table,
    columns: dict[str, str],
    known_items: pa.Array,
    source: str,
    file: int,
    rows: np.ndarray,
) -> tuple[pa.Table, pa.Table]:
    """(clean rows in :data:`CLEAN`, rejected rows in ``schema.REJECTS``) of one raw batch.

    ``columns`` maps canonical names to ``table``'s columns (as ``Source.columns``); ``rows`` are
    the batch rows' 0-based row numbers in ``source``; ``known_items`` the catalogue's item ids.
    """
    n = table.num_rows
    user = parse_ids(_column(table, columns, "user_id"))
    item = parse_ids(_column(table, columns, "item_id"))
    stamp = parse_timestamps(_column(table, columns, "timestamp"))
    rating, rating_bad = parse_numbers(_column(table, columns, "rating"))
    value, value_bad = parse_numbers(_column(table, columns, "value"))
    known = pc.is_in(item, value_set=known_items).fill_null(False)
    checks = [
        user.is_null().to_numpy(zero_copy_only=False),
        item.is_null().to_numpy(zero_copy_only=False),
        stamp.is_null().to_numpy(zero_copy_only=False),
        rating_bad,
        value_bad,
        ~known.to_numpy(zero_copy_only=False),
    ]
    reason = np.full(n, -1, dtype=np.int8)
    for k in range(len(checks) - 1, -1, -1):  # the first failing check wins
        reason[checks[k]] = k
    good = reason < 0
    keep = pa.array(good)
    users = user.filter(keep)
    ukeys = by_distinct(users, natural_sort_key, pa.binary())
    clean = pa.table(
        [
            users,
            ukeys,
            item.filter(keep),
            stamp.filter(keep),
            rating.filter(keep),
            value.filter(keep),
            pa.array(np.full(int(good.sum()), file, dtype=np.int32)),
            pa.array(rows[good], pa.int64()),
        ],
        schema=CLEAN,
    )
    bad = np.flatnonzero(~good)
    rejects = reject_rows(table, bad, source, rows[bad], [EVENT_REASONS[r] for r in reason[bad]])
    return clean, rejects


def reject_rows(
    table: pa.Table, positions: np.ndarray, source: str, rows: np.ndarray, reasons: list[str]
) -> pa.Table:
    """REJECTS rows for ``table``'s rows at ``positions``: the raw record as JSON, as
    ``Rejects.add`` writes it."""
    records = table.take(pa.array(positions, pa.int64())).to_pylist() if len(positions) else []
    return pa.table(
        {
            "source": pa.array([source] * len(records), pa.string()),
            "row": pa.array(rows, pa.int64()),
            "reason": pa.array(reasons, pa.string()),
            "record": pa.array(
                [json.dumps(r, default=str, ensure_ascii=False) for r in records], pa.string()
            ),
        },
        schema=schema.REJECTS,
    )


def raise_first(rejects: pa.Table) -> None:
    """With ``data.on_bad_rows=error``: stop on the first of these rejects, with the message the
    row-by-row validation gives (file, row, reason, record)."""
    if not rejects.num_rows:
        return
    first = rejects.slice(0, 1).to_pylist()[0]
    Rejects("error").add(
        first["source"], first["row"], first["reason"], json.loads(first["record"])
    )
