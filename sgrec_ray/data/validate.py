"""Row-level validation of raw source tables: nothing is dropped silently.

Every loader hands over tables exactly as read from their files (a :class:`Source`). This module
turns them into clean Python columns and sends every row it cannot use to a :class:`Rejects` log
with the file, the 0-based data row number (header not counted), a short reason and the row itself
as JSON. With ``data.on_bad_rows: error`` the first bad row stops the run instead, naming the same
three things.

A missing *column* is never a row problem: it fails at once, naming the columns and the file,
because no row of that file can be right.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sgrec_ray.data import schema
from sgrec_ray.errors import UserError

# Reasons a row can be rejected (stable strings: they are counted in stats and tested).
MISSING_USER_ID = "missing_user_id"
MISSING_ITEM_ID = "missing_item_id"
BAD_TIMESTAMP = "bad_timestamp"
BAD_RATING = "bad_rating"
BAD_VALUE = "bad_value"
DUPLICATE_EVENT = "duplicate_event"
UNKNOWN_ITEM = "unknown_item"
DUPLICATE_ITEM = "duplicate_item"
DUPLICATE_USER = "duplicate_user"
BAD_LIST = "bad_list"


class DataError(UserError, ValueError):
    """Input data cannot be used as given; the message names the file (and row/column/reason)."""


@dataclass
class Source:
    """A table as read from one file, plus which of its columns play which canonical role.

    ``columns`` maps canonical names (``user_id``, ``item_id``, ``timestamp``, ``title`` …) to the
    column names in ``table``, so a reject can show the row with the names the user knows.
    """

    table: pa.Table
    uri: str
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, name: str) -> list[Any]:
        """Values of the canonical column ``name`` (all None if the source has no such column)."""
        src = self.columns.get(name)
        if src is None or src not in self.table.column_names:
            return [None] * self.table.num_rows
        return self.table.column(src).to_pylist()

    def has(self, name: str) -> bool:
        return self.columns.get(name) in self.table.column_names


def require_columns(
    available: Iterable[str], required: Sequence[str], uri: str, hint: str = ""
) -> None:
    """Fail at once, naming every missing column and the file, unless ``required`` is all there."""
    have = list(available)
    missing = [c for c in required if c not in have]
    if missing:
        msg = f"{uri}: missing required column(s) {missing}; columns present: {have}"
        raise DataError(f"{msg}. {hint}" if hint else msg)


class Rejects:
    """Collects rejected rows (``mode="reject"``) or raises on the first one (``mode="error"``)."""

    def __init__(self, mode: str = "reject"):
        if mode not in ("reject", "error"):
            raise ValueError(f"on_bad_rows must be 'reject' or 'error', got {mode!r}")
        self.mode = mode
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def add(
        self, source: str, row: int, reason: str, record: dict[str, Any], detail: str = ""
    ) -> None:
        if self.mode == "error":
            extra = f" ({detail})" if detail else ""
            raise DataError(
                f"{source}: row {row} (0-based, header not counted): {reason}{extra}; "
                f"row = {_to_json(record)}. Fix the input or set data.on_bad_rows=reject to "
                "count such rows and write them to rejects.parquet."
            )
        self.counts[reason] += 1
        self.rows.append(
            {"source": source, "row": int(row), "reason": reason, "record": _to_json(record)}
        )

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=schema.REJECTS)

    def __len__(self) -> int:
        return len(self.rows)


def _to_json(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str, ensure_ascii=False, sort_keys=False)


class _RowRecords:
    """The source rows as dicts, materialised only if some row is actually rejected."""

    def __init__(self, table: pa.Table):
        self._table = table
        self._rows: list[dict[str, Any]] | None = None

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._rows is None:
            self._rows = self._table.to_pylist()
        return self._rows[i]


# --------------------------------------------------------------------------------------------
# Value parsing


def parse_id(value: Any) -> str | None:
    """An id as a non-empty string; ints (and floats holding ints, as pandas makes) keep digits."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def parse_timestamp(value: Any) -> int | None:
    """Seconds since the epoch from an int, float, datetime/date or an int/float/ISO-8601 string.

    Naive datetimes are read as UTC. Anything else (empty, NaN, free text) gives None = unparsable.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp())
    if isinstance(value, dt.date):
        return int(
            dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
        )
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return int(number) if math.isfinite(number) else None
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return parse_timestamp(dt.datetime.fromisoformat(text))
        except ValueError:
            return None
    return None


_BAD = object()  # marker: a value is present but not a number


def parse_number(value: Any) -> Any:
    """A float, None for a missing value (empty, null, NaN), or ``_BAD`` for a non-numeric one."""
    if value is None:
        return None
    if isinstance(value, bool):
        return _BAD
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return _BAD
    if math.isnan(number):
        return None
    return number if math.isfinite(number) else _BAD


# --------------------------------------------------------------------------------------------
# Tables


@dataclass
class Events:
    """Validated events in file order (plain Python columns; ``row`` = 0-based source row)."""

    user_id: list[str]
    item_id: list[str]
    timestamp: list[int]
    rating: list[float | None]
    value: list[float | None]
    row: list[int]

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, keep: Sequence[int]) -> Events:
        return Events(
            user_id=[self.user_id[i] for i in keep],
            item_id=[self.item_id[i] for i in keep],
            timestamp=[self.timestamp[i] for i in keep],
            rating=[self.rating[i] for i in keep],
            value=[self.value[i] for i in keep],
            row=[self.row[i] for i in keep],
        )


def _unique_ids(
    src: Source, key: str, missing: str, duplicate: str, rejects: Rejects
) -> tuple[list[int], list[str]]:
    """(row numbers kept, their ids as strings): a row without an id, or repeating an earlier
    row's id, is rejected with its reason and record (the first listing wins)."""
    records = _RowRecords(src.table)
    seen: set[str] = set()
    keep: list[int] = []
    clean: list[str] = []
    what = key.removesuffix("_id")
    for i, raw in enumerate(src.column(key)):
        value = parse_id(raw)
        if value is None:
            rejects.add(src.uri, i, missing, records[i])
        elif value in seen:
            rejects.add(src.uri, i, duplicate, records[i], f"{what} {value!r} listed before")
        else:
            seen.add(value)
            keep.append(i)
            clean.append(value)
    return keep, clean


def validate_items(src: Source, rejects: Rejects) -> pa.Table:
    """The item catalogue with ``item_id`` as string, rows without an id or repeating one rejected.

    Returns a table with canonical column names (``item_id`` + every other canonical column of
    ``src``, as strings), in file order.
    """
    keep, clean_ids = _unique_ids(src, "item_id", MISSING_ITEM_ID, DUPLICATE_ITEM, rejects)
    out: dict[str, list[str | None]] = {"item_id": list(clean_ids)}
    for name in src.columns:
        if name == "item_id" or not src.has(name):
            continue
        values = src.column(name)
        out[name] = [_text_or_none(values[i]) for i in keep]
    return pa.table({k: pa.array(v, pa.string()) for k, v in out.items()})


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def validate_users(src: Source, rejects: Rejects) -> pa.Table:
    """User features with ``user_id`` as string; rows without an id or repeating one rejected."""
    keep, clean = _unique_ids(src, "user_id", MISSING_USER_ID, DUPLICATE_USER, rejects)
    id_col = src.columns["user_id"]
    table = src.table.take(pa.array(keep, pa.int64())).drop_columns([id_col])
    return table.add_column(0, "user_id", pa.array(clean, pa.string()))


def validate_events(src: Source, known_items: set[str], rejects: Rejects) -> Events:
    """Check every event row; return the usable ones in file order.

    Checks, in this order (a row gets the first reason that applies): user id, item id, timestamp,
    rating, value, item present in the catalogue, and finally duplicates — the same (user, item,
    timestamp) seen earlier in the file; the first occurrence is kept.
    """
    users, items, stamps = src.column("user_id"), src.column("item_id"), src.column("timestamp")
    ratings, values = src.column("rating"), src.column("value")
    records = _RowRecords(src.table)
    out = Events([], [], [], [], [], [])
    seen: set[tuple[str, str, int]] = set()
    for i in range(src.table.num_rows):
        user_id = parse_id(users[i])
        if user_id is None:
            rejects.add(src.uri, i, MISSING_USER_ID, records[i])
            continue
        item_id = parse_id(items[i])
        if item_id is None:
            rejects.add(src.uri, i, MISSING_ITEM_ID, records[i])
            continue
        ts = parse_timestamp(stamps[i])
        if ts is None:
            rejects.add(src.uri, i, BAD_TIMESTAMP, records[i], f"timestamp {stamps[i]!r}")
            continue
        rating = parse_number(ratings[i])
        if rating is _BAD:
            rejects.add(src.uri, i, BAD_RATING, records[i], f"rating {ratings[i]!r}")
            continue
        value = parse_number(values[i])
        if value is _BAD:
            rejects.add(src.uri, i, BAD_VALUE, records[i], f"value {values[i]!r}")
            continue
        if item_id not in known_items:
            rejects.add(src.uri, i, UNKNOWN_ITEM, records[i], f"item {item_id!r} not in catalogue")
            continue
        key = (user_id, item_id, ts)
        if key in seen:
            rejects.add(src.uri, i, DUPLICATE_EVENT, records[i], "same user, item and timestamp")
            continue
        seen.add(key)
        out.user_id.append(user_id)
        out.item_id.append(item_id)
        out.timestamp.append(ts)
        out.rating.append(rating)
        out.value.append(value)
        out.row.append(i)
    return out
