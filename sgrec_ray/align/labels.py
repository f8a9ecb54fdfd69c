"""Point-wise labels for the judge: schema, validation, reading, and the split by time.

A label says what the judge *should* answer for one (user, item): a score per aspect on the judge's
scale 1..``judge.scale``, optionally a holistic score and a rationale, and who produced it
(``source``), so that training and evaluation can weigh or filter labels by where they came from:

- ``weak:<data>``: derived from ratings and genres (:mod:`sgrec_ray.align.weak_labels`);
- ``teacher:<model>``: drafted by an LLM and not checked by a person;
- ``human:<name>``: a reviewer accepted or corrected a draft (:mod:`sgrec_ray.align.annotate`);
- whatever a user's own file says in its ``source`` column (``file:<uri>`` when it has none).

Validation follows :mod:`sgrec_ray.data.validate`: a missing column fails at once, naming it,
because no row can be right without it; a bad row goes to a rejects table (``data.schema.REJECTS``:
file, row, reason, the row as JSON) and is counted — never dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.data.loaders import read_any_table
from sgrec_ray.data.validate import (
    BAD_TIMESTAMP,
    MISSING_ITEM_ID,
    MISSING_USER_ID,
    UNKNOWN_ITEM,
    DataError,
    Rejects,
    parse_id,
    parse_number,
    parse_timestamp,
    require_columns,
)
from sgrec_ray.judge import pairs
from sgrec_ray.judge.prompts import PromptSpec

# Reasons a label row can be rejected (stable strings: counted and tested). The data stage's
# reasons (missing_user_id, missing_item_id, unknown_item, bad_timestamp) are reused as they are.
MISSING_SCORE = "missing_score"  # empty, null or NaN
BAD_SCORE = "bad_score"  # not a number (or infinite)
SCORE_OUT_OF_SCALE = "score_out_of_scale"  # a number outside 1..scale
ITEM_MISMATCH = "item_mismatch"  # item_id and item_idx both given and naming different items
DUPLICATE_LABEL = "duplicate_label"  # the same (user, item) as an earlier row; the first wins

# A label file names its item by item_id (what people read) or item_idx (what models index).
ITEM_COLUMNS = "item_id or item_idx"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def label_schema(aspects: Sequence[str]) -> pa.Schema:
    """Columns of a clean label table: one float32 column per aspect, in ``aspects`` order."""
    return pa.schema(
        [
            ("user_id", pa.string()),
            ("item_idx", pa.int32()),
            ("item_id", pa.string()),
            *[(a, pa.float32()) for a in aspects],
            # The overall target on the same scale when one is known (weak labels: the rating).
            ("holistic", pa.float32()),
            ("rationale", pa.string()),
            ("source", pa.string()),  # weak:… | teacher:… | human:… | file:…
            ("timestamp", pa.int64()),  # when the (user, item) event happened; for the time split
        ]
    )


def item_index(items: pa.Table) -> dict[str, int]:
    """item_id → item_idx of a data-stage items table: the catalogue labels are checked against."""
    return dict(
        zip(items.column("item_id").to_pylist(), items.column("item_idx").to_pylist(), strict=True)
    )


# --------------------------------------------------------------------------------------------
# Validation


def validate_labels(
    table: pa.Table,
    aspects: Sequence[str],
    scale: int,
    item_ids: Mapping[str, int],
    *,
    uri: str = "labels",
    default_source: str = "unknown",
    on_bad_rows: str = "reject",
) -> tuple[pa.Table, pa.Table]:
    """Check every label row; return (clean labels, rejects).

    Args:
        table: raw labels (any column types: a CSV gives strings, Parquet numbers). Needs
            ``user_id``, ``item_id`` or ``item_idx``, and one column per aspect; ``holistic``,
            ``rationale``, ``source`` and ``timestamp`` are optional; other columns are ignored.
        aspects: the judge's aspects (``judge.aspects``); scale: scores must lie in 1..scale.
        item_ids: the catalogue, item_id → item_idx (:func:`item_index`).
        uri: names the input in errors and in the rejects' ``source`` column.
        default_source: provenance for rows without a ``source`` value.
        on_bad_rows: ``reject`` collects bad rows; ``error`` raises on the first one.

    Returns:
        (``label_schema(aspects)`` table in input order, ``data.schema.REJECTS`` table). Every row
        is in exactly one of the two.

    Raises:
        DataError (a ValueError) naming every missing column; ValueError for unknown aspects or a
        scale outside 2..9 (the judge reads one digit token per score).
    """
    rejects = Rejects(on_bad_rows)
    clean = check_labels(
        table, aspects, scale, item_ids, rejects, uri=uri, default_source=default_source
    )
    return clean, rejects.table()


def check_labels(
    table: pa.Table,
    aspects: Sequence[str],
    scale: int,
    item_ids: Mapping[str, int],
    rejects: Rejects,
    *,
    uri: str,
    default_source: str = "unknown",
    rows: Sequence[int] | None = None,
    records: Sequence[dict[str, Any]] | None = None,
) -> pa.Table:
    """:func:`validate_labels` writing into a caller's :class:`Rejects`.

    For callers that reject rows in several steps and want one log (the sheet import): ``rows``
    are the row numbers to report (default 0..n-1) and ``records`` the rows as the user wrote
    them (default: the rows of ``table``).
    """
    PromptSpec(tuple(aspects), scale)  # the judge's own check of aspects and scale
    require_columns(
        [*table.column_names, *([ITEM_COLUMNS] if _has_item_column(table) else [])],
        ["user_id", ITEM_COLUMNS, *aspects],
        uri,
        hint=f"Labels need user_id, item_id (or item_idx) and one score column per judge aspect "
        f"{list(aspects)} on 1..{scale}; holistic, rationale, source and timestamp are optional.",
    )
    n = table.num_rows
    numbers = list(range(n)) if rows is None else list(rows)
    names = ["user_id", "item_id", "item_idx", *aspects, "holistic", "rationale", "source"]
    cols = {c: _column(table, c) for c in [*names, "timestamp"]}
    by_idx = {int(v): k for k, v in item_ids.items()}
    schema = label_schema(aspects)
    out: dict[str, list[Any]] = {name: [] for name in schema.names}
    seen: set[tuple[str, int]] = set()
    for k in range(n):
        row = {c: values[k] for c, values in cols.items()}
        parsed = _parse_row(row, aspects, scale, item_ids, by_idx, default_source)
        if isinstance(parsed, tuple):
            reason, detail = parsed
        elif (parsed["user_id"], parsed["item_idx"]) in seen:
            reason, detail = DUPLICATE_LABEL, "same user and item as an earlier row"
        else:
            seen.add((parsed["user_id"], parsed["item_idx"]))
            for name in schema.names:
                out[name].append(parsed[name])
            continue
        record = records[k] if records is not None else table.slice(k, 1).to_pylist()[0]
        rejects.add(uri, numbers[k], reason, record, detail)
    return pa.table(out, schema=schema)


def _has_item_column(table: pa.Table) -> bool:
    return "item_id" in table.column_names or "item_idx" in table.column_names


def _column(table: pa.Table, name: str) -> list[Any]:
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


def parse_score(value: Any, scale: int) -> tuple[float | None, str | None]:
    """(score, None) for a finite number in [1, scale], else (None, the reject reason).

    Fractional scores are kept (an average of annotators is a fair label); training rounds.
    """
    number = parse_number(value)
    if number is None:
        return None, MISSING_SCORE
    if not isinstance(number, float):  # parse_number's marker for "present but not a number"
        return None, BAD_SCORE
    if not 1.0 <= number <= scale:
        return None, SCORE_OUT_OF_SCALE
    return number, None


def _parse_row(
    row: dict[str, Any],
    aspects: Sequence[str],
    scale: int,
    item_ids: Mapping[str, int],
    by_idx: Mapping[int, str],
    default_source: str,
) -> dict[str, Any] | tuple[str, str]:
    """One raw row → a clean label dict, or (reason, detail) for the first problem found."""
    user_id = parse_id(row["user_id"])
    if user_id is None:
        return MISSING_USER_ID, ""
    item = _resolve_item(row["item_id"], row["item_idx"], item_ids, by_idx)
    if isinstance(item, tuple):
        return item
    label: dict[str, Any] = {"user_id": user_id, "item_idx": item, "item_id": by_idx[item]}
    for name in [*aspects, "holistic"]:
        if name == "holistic" and _is_missing(row[name]):
            label[name] = None
            continue
        score, reason = parse_score(row[name], scale)
        if reason is not None:
            return reason, f"{name}={row[name]!r}; scores must be numbers in 1..{scale}"
        label[name] = score
    stamp = None
    if not _is_missing(row["timestamp"]):
        stamp = parse_timestamp(row["timestamp"])
        if stamp is None:
            return BAD_TIMESTAMP, f"timestamp {row['timestamp']!r}"
    label["timestamp"] = stamp
    label["rationale"] = _text(row["rationale"])
    label["source"] = _text(row["source"]) or default_source
    return label


def _resolve_item(
    raw_id: Any, raw_idx: Any, item_ids: Mapping[str, int], by_idx: Mapping[int, str]
) -> int | tuple[str, str]:
    """The item_idx a row names (by item_id, item_idx or both), or (reason, detail)."""
    item_id = parse_id(raw_id)
    idx = parse_number(raw_idx)
    from_id = None
    if item_id is not None:
        from_id = item_ids.get(item_id)
        if from_id is None:
            return UNKNOWN_ITEM, f"item_id {item_id!r} not in catalogue"
        if idx is None:
            return int(from_id)
    elif idx is None:
        return MISSING_ITEM_ID, ""
    if not isinstance(idx, float) or not idx.is_integer() or int(idx) not in by_idx:
        return UNKNOWN_ITEM, f"item_idx {raw_idx!r} not in catalogue"
    if from_id is not None and from_id != int(idx):
        return ITEM_MISMATCH, f"item_id {item_id!r} is item_idx {from_id}, not {int(idx)}"
    return int(idx)


def _is_missing(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str | None:
    return None if _is_missing(value) else str(value).strip()


# --------------------------------------------------------------------------------------------
# Reading


def read_labels(uri: str) -> pa.Table:
    """A label file as written (not yet validated): JSONL by extension, else Parquet (or CSV/TSV).

    Ids are read as text, so "007" stays "007". A JSONL line that is not a JSON object fails at
    once, naming the line: the file is broken, not the label.
    """
    uri = storage.normalize(uri)
    if uri.lower().endswith(JSONL_SUFFIXES):
        return _read_jsonl(uri)
    return read_any_table(uri, string_columns=["user_id", "item_id"])


def _read_jsonl(uri: str) -> pa.Table:
    if not storage.exists(uri):
        raise DataError(f"file not found: {uri}")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{uri}: line {number} is not valid JSON (labels are JSONL: one object per "
                f"line): {err}"
            ) from err
        if not isinstance(row, dict):
            raise DataError(
                f"{uri}: line {number}: expected a JSON object (labels are JSONL: one object per "
                f"line), got {line[:80]!r}"
            )
        rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({c: _array([row.get(c) for row in rows]) for c in names})


def _array(values: list[Any]) -> pa.Array:
    """Values of one JSONL key; mixed types (4 and "four") become text for validation to judge."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string()
        )


# --------------------------------------------------------------------------------------------
# Split


def time_split(labels: pa.Table, heldout_fraction: float) -> tuple[pa.Table, int | None]:
    """Add ``split``: the latest ``heldout_fraction`` of labels (by timestamp) are ``heldout``,
    by the same rule as Stage B's pairs (:func:`sgrec_ray.judge.pairs.split_by_time`).

    Returns (``labels`` + a ``split`` column, in input order; cutoff).
    """
    held, cutoff = pairs.split_by_time(
        labels.column("timestamp"), heldout_fraction, "label", "align.heldout_fraction"
    )
    return labels.append_column("split", pairs.split_column(held)), cutoff
